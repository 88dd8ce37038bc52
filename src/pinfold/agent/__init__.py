"""The per-host agent: makes one host's placement real through a driver.

Rule: placement decisions come from `pinfold.placement` only; this package
turns them into domains (libvirt) or in-memory VMs (sim), and translates
hypervisor errors into `DriverError` at the driver boundary.

Here so far (issue 4, first slices): domain XML (`domain`), the drivers, the
SQLite store (`store`), the start-up repair plan (`reconcile`) and the agent
core (`service`). The daemon, disk images, monitor, warm pool and REST API are
still to come.
"""
