"""The per-host agent: makes one host's placement real through a driver.

Rule: placement decisions come from `pinfold.placement` only; this package
turns them into domains (libvirt) or in-memory VMs (sim), and translates
hypervisor errors into `DriverError` at the driver boundary.

Here so far (issue 4, first slices): domain XML (`domain`), the drivers, the
SQLite store (`store`), the start-up repair plan (`reconcile`), the agent core
(`service`: the `Agent` facade over `core`, `pins`, `making`, `warm`, `lifecycle`
and `startup`), the HTTP API (`api`), settings (`config`) and the daemon
(`daemon`, `pinfold agent`), disk overlays (`disks`) and the monitor
(`monitor`). The warm pool, adoption of running domains into a fresh store and
the kill -9 tests are still to come.
"""
