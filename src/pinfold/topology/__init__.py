"""Host CPU topology: logical CPUs, caches, NUMA nodes, memory, distances.

Part of the placement core. The model (`Topology`, `CPU`) is pure data; reading
sysfs and SlackVM JSON files happens in `sysfs` and `slackvm_json`, reached
through `Topology.discover`, `Topology.load` and `Topology.save`.
"""

from pinfold.topology.cpulist import format_cpulist, parse_cpulist
from pinfold.topology.model import CACHE_STEP, CPU, Topology

__all__ = ["CACHE_STEP", "CPU", "Topology", "format_cpulist", "parse_cpulist"]
