"""Drivers behind one interface (`base.Driver`): `sim` in memory, `libvirt`
real. `libvirt` is imported only when asked for, so hosts without
libvirt-python can still run the sim driver."""

from pinfold.agent.drivers.base import Driver, DriverError, GuestInfo, GuestState
from pinfold.agent.drivers.sim import SimDriver

__all__ = ["Driver", "DriverError", "GuestInfo", "GuestState", "SimDriver"]
