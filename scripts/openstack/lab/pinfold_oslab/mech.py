"""An ML2 mechanism driver that binds every port, for a lab without agents.

The lab runs neutron-server alone (no Open vSwitch, no OVN, no L2 agent), so
no stock driver can bind a port and Nova's boot would fail with a binding
error; neutron's own ``test`` driver needs its test fixtures. This driver
binds every segment offered with ``vif_type=tap`` and marks the port ACTIVE:
the fake compute driver never plugs anything, and the port keeps a real
address from Neutron's IPAM.
"""

from __future__ import annotations

from typing import Any

from neutron_lib.plugins.ml2 import api


class TapMechanismDriver(api.MechanismDriver):
    """Bind every port to its first segment as a tap device."""

    def initialize(self) -> None:
        """Nothing to set up: no agents, no RPC."""

    @property
    def connectivity(self) -> str:
        return "l2"

    def bind_port(self, context: Any) -> None:
        """Bind to the first segment offered, ACTIVE at once."""
        for segment in context.segments_to_bind:
            context.set_binding(segment[api.ID], "tap", {"port_filter": False}, status="ACTIVE")
            return
