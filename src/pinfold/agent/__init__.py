"""The per-host agent: makes one host's placement real through a driver.

Rule: placement decisions come from `pinfold.placement` only; this package
turns them into domains (libvirt) or in-memory VMs (sim), and translates
hypervisor errors into `DriverError` at the driver boundary.

This is the first slice of the agent (issue 4): domain XML and the drivers.
The daemon, store, monitor, warm pool and REST API are still to come.
"""
