"""Every default that more than one place spells: named once, imported
everywhere (settings models, service dataclasses, CLI options, the simulator).

The placement core's own defaults are defined in `pinfold.placement` (which
cannot import this package) and named here again for the shells.
"""

from __future__ import annotations

from pinfold.placement.allocator import DEFAULT_CRITICAL_SIZE, DEFAULT_RESERVED_MEMORY_MIB
from pinfold.placement.policies import DEFAULT_POLICY

__all__ = [
    "ACTION_TIMEOUT_S",
    "AGENT_PORT",
    "AGENT_TIMEOUT_S",
    "COALESCE_AT_MOST",
    "CONTROLLER_PORT",
    "DATABASE_POOL_SIZE",
    "DEFAULT_CRITICAL_SIZE",
    "DEFAULT_POLICY",
    "DEFAULT_RESERVED_MEMORY_MIB",
    "HEARTBEAT_PERIOD_S",
    "MAX_MIGRATION_LIMIT_S",
    "MIGRATION_LIMIT_S",
    "MIGRATION_TIMEOUT_S",
    "SHUTDOWN_TIMEOUT_S",
    "STALE_AFTER_S",
]

#: how often an agent samples its host and sends a heartbeat, and the period the controller
#: assumes of an agent that names none
HEARTBEAT_PERIOD_S = 10.0
#: how long an agent waits for a guest to shut down before forcing it off
SHUTDOWN_TIMEOUT_S = 30.0
#: the default timeout of a lifecycle action: an agent's shutdown timeout, a forced power-off
#: after it, and room to spare
ACTION_TIMEOUT_S = SHUTDOWN_TIMEOUT_S + 60.0
#: the timeout of every other call from the controller to an agent
AGENT_TIMEOUT_S = 30.0
#: how long the controller waits for a source agent's live send: it copies the guest's
#: memory (and its disks when they are not shared) before it answers
MIGRATION_TIMEOUT_S = 1800.0
#: how long a source agent lets a live migration run before it cancels it (the guest stays);
#: at most MAX_MIGRATION_LIMIT_S, so that the agent's answer comes before the controller stops
#: waiting (MIGRATION_TIMEOUT_S)
MIGRATION_LIMIT_S = 600.0
MAX_MIGRATION_LIMIT_S = MIGRATION_TIMEOUT_S - 300.0
#: a reservation untouched this long has lost its creator (a controller died)
STALE_AFTER_S = 60.0
#: the most creates (or deletes) that arrive while others are under way which the controller
#: places together in one pass, as a bulk create's; 1: each alone
COALESCE_AT_MOST = 32
#: the connections a controller keeps open to its database, and the most it opens beyond them
#: under load (twice this in all)
DATABASE_POOL_SIZE = 20
#: the agent's port
AGENT_PORT = 8099
#: the controller's port, and the one the CLI calls when told no URL
CONTROLLER_PORT = 8100
