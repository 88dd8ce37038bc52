"""pinfold's settings for the RAPID endpoint (the `[rapid]` table of the
agent's TOML file); RAPID's own keys come from its configuration.xml.

They live in the agent, which reads its TOML file, not in `pinfold.rapid`:
RAPID is a plug-in of the agent that only the agent's daemon loads
(tests/test_layers.py). `pinfold.rapid.settings` names them too."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["RapidSettings"]


class RapidSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: RAPID's configuration.xml; None: no RAPID endpoint
    config: Path | None = None
    #: the address the VMM port is bound to (RAPID announces `vmmIpAddress`, binds all)
    listen: str = "0.0.0.0"
    #: CIDRs allowed to connect to the VMM port; empty (and no `allow_known_peers`): any peer, as in RAPID
    allow: tuple[str, ...] = ()
    #: allow the DS (`dsIpAddress`), the SLAM (as the DS names it) and the VMs' own addresses
    #: (their ASs) besides `allow`; off: RAPID's peers may connect from addresses the VMM never hears of
    allow_known_peers: bool = False
    #: an AS may act only on the VM whose address it connects from
    as_must_match_ip: bool = False
    #: the oversubscription level of RAPID's VMs
    ratio: float = Field(default=1.0, ge=1.0, le=64.0)
    #: timeout of every socket, both ways
    socket_timeout_s: float = Field(default=30.0, gt=0)
    #: a peer's whole message (from its connection, or from the VMM's last reply) must be in by then
    message_deadline_s: float = Field(default=15.0, gt=0)
    #: how long a start waits for the VM's AS to register (RAPID: about 200 s)
    as_wait_s: float = Field(default=200.0, gt=0)
    #: how long a new VM's address is looked for (RAPID: about 100 s)
    ip_wait_s: float = Field(default=100.0, gt=0)
    #: an AS whose address is unknown is looked up this many times, this far apart (RAPID: 4, 10 s)
    as_lookup_tries: int = Field(default=4, ge=1, le=100)
    as_lookup_interval_s: float = Field(default=10.0, ge=0)
    #: VMM_NOTIFY_DS period (RAPID: 10 s)
    notify_period_s: float = Field(default=10.0, gt=0)
    #: how often the DS is asked whether it still knows this VMM
    recheck_period_s: float = Field(default=60.0, gt=0)
    #: the AS's port for the flavor-change handshake (hard-coded 4322 in RAPID)
    as_port: int = Field(default=4322, ge=1, le=65535)
    helper_vcpus: int = Field(default=1, ge=1, le=64)
    helper_memory_mib: int = Field(default=1024, ge=1)
    #: suspended spares per helper slot, in a warm pool, so a lost helper comes back at once
    helper_spares: int = Field(default=1, ge=0, le=10)
    #: the largest worker pool whatever vmmMaxConnection says
    max_workers: int = Field(default=64, ge=1, le=1024)
