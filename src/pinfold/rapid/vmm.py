"""The RAPID VM Manager on top of a pinfold agent (PROTOCOL.md sections 3-4).

Peers see RAPID's VMM: the same opcodes, reply layouts and "no reply" cases,
its VM type table, one VM per user, two helper VMs (users -1 and -2). Under
it, each RAPID VM is an agent VM (`rapid-user-<id>`, `rapid-helper-<n>`),
placed by the agent's allocator on its level's vNode, and RAPID's own state
(VMM id, SLAM address, users' VMs) is kept in the agent's store.
The VMM reaches its VMs only through a `rapid.backend.Backend` (the agent's
is `rapid.agent_backend.AgentBackend`), and is split by concern into the
modules `rapid.core` lists.

Fixed here, without changing what peers see (section 8): requests for one user
are serialised (two starts make one VM); handlers change only the fields of a
VM's record they mean to (an AS confirmation or a DS vmid can no longer be
lost); every socket has a timeout; an AS that answers ERROR ends a start at
once rather than after 200 s; sizes are checked by the allocator before the
hypervisor is touched; the DS is asked now and then whether it still knows
this VMM, and told again about its VMs if it does not; what a peer or the
hypervisor failed to do (a DS registration, a notification, a delete) is
marked in the record and done again on a later pass; VMs that vanished are
dropped with the DS told, and helpers made again; nothing is sent to RAPID's
animation server. Failures are logged (logger `pinfold.rapid.vmm`).
"""

from __future__ import annotations

import threading

from pinfold.rapid.core import Usage
from pinfold.rapid.handlers import Handlers
from pinfold.rapid.upkeep import Upkeep

__all__ = ["VMM", "Usage"]


class VMM(Handlers, Upkeep):
    """RAPID's VMM, its parts put together (see `rapid.core`)."""

    def known_peer(self, peer: str) -> bool:
        """Whether `peer` is one RAPID's VMM talks with: the DS, the SLAM the
        DS named, or a VM's own address (its AS)."""
        slam = self.state.slam()
        if peer in self._ds_addresses or (slam is not None and peer == slam[0]):
            return True
        return self.state.by_ip(peer) is not None

    def start(self) -> None:
        """Settle RAPID's records with the agent's VMs, then, in the background,
        register with the DS and the SLAM (retrying), finish what failures
        left undone, make missing helpers, and send VMM_NOTIFY_DS every period."""
        self.reconcile()
        for target in (self._register_loop, self._notify_loop):
            thread = threading.Thread(target=target, name=f"rapid-{target.__name__}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        self._abandon_as_waits()
        for thread in self._threads:
            thread.join(timeout=self.settings.socket_timeout_s + 5)
