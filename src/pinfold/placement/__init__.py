"""The placement core: vNodes, admission, CPU choice, pinning, host scoring.

The rule of this package: pure and deterministic. No I/O, no clock, no
globals, no randomness; nothing here imports the agent, controller, simulator
or RAPID packages. The simulator, the agent and the controller all call it,
so a simulated result predicts the live system. `tests/placement/
test_purity.py` keeps it that way.
"""

from pinfold.placement.allocator import DEFAULT_CRITICAL_SIZE, Change, HostAllocator
from pinfold.placement.arithmetic import cpus_to_add, shrunk_size
from pinfold.placement.cluster import Cluster, Decision, NoHostError
from pinfold.placement.errors import PlacementError, Refusal, RefusalCode
from pinfold.placement.groups import GroupPolicy, GroupRule, host_refusal
from pinfold.placement.policies import DEFAULT_POLICY, POLICIES, Demand, HostColumns, Policy, get_policy
from pinfold.placement.snapshot import HostSnapshot
from pinfold.placement.spec import VMSpec, invalid_reason, level_key

__all__ = [
    "DEFAULT_CRITICAL_SIZE",
    "DEFAULT_POLICY",
    "POLICIES",
    "Change",
    "Cluster",
    "Decision",
    "Demand",
    "GroupPolicy",
    "GroupRule",
    "HostAllocator",
    "HostColumns",
    "HostSnapshot",
    "NoHostError",
    "PlacementError",
    "Policy",
    "Refusal",
    "RefusalCode",
    "VMSpec",
    "cpus_to_add",
    "get_policy",
    "host_refusal",
    "invalid_reason",
    "level_key",
    "shrunk_size",
]
