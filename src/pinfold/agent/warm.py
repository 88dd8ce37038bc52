"""Warm-pool upkeep (see `pools` for what a pool is): tending the pools
(replace broken members, suspend warmed ones, drop extra ones, add one
missing), and handing a ready member out for a matching create.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from pinfold.agent.core import AgentError, log
from pinfold.agent.drivers.base import DriverError
from pinfold.agent.making import Making
from pinfold.agent.pools import PoolSpec
from pinfold.agent.store import Pending, StoredVM
from pinfold.model.failpoints import crash_point
from pinfold.model.lifecycle import VMState
from pinfold.model.vm import VMRequest
from pinfold.placement import PlacementError

__all__ = ["BROKEN", "WarmPools"]

#: the states of a pool member that will never be handed out (see `WarmPools.tend_pools`)
BROKEN = frozenset({VMState.ERROR, VMState.MISSING})


class WarmPools(Making):
    """The pools' members: kept filled and ready, and handed out."""

    def pool_status(self) -> dict[str, dict[str, int | str | None]]:
        """Per pool: its size, members ready and warming, and `last_error`
        (None while it fills as it should)."""
        with self.lock:
            status: dict[str, dict[str, int | str | None]] = {}
            for pool in self.settings.pools:
                members = self._members(pool.name)
                ready = sum(1 for vm in members if vm.state is VMState.POOLED and vm.pending is None)
                status[pool.name] = {
                    "size": pool.size, "ready": ready, "warming": len(members) - ready,
                    "last_error": self.pool_errors.get(pool.name),
                }  # fmt: skip
            return status

    def tend_pools(self, now: float) -> bool:
        """One step of pool upkeep: replace broken members, suspend members
        whose warm-up is over, drop members no pool wants, add one missing
        member. True while there is more to do (a member still to add); a
        pool that does not fit on the host raises AgentError, leaving the
        others as they are.

        A broken member (left in state error or missing by a start, or with
        a pending mark, which under the lock only a failed start leaves) is
        deleted, and the pool refills as for a hand-out: members are all
        alike, so replacing one is simpler than finishing what a start could
        not. Otherwise it would count towards the pool's size until the next
        start, never to be handed out. When it cannot be deleted, the pool's
        `last_error` says so, the rest of the upkeep goes on (one stuck member
        must not stop every pool), and the error is raised at the end; the
        next tick tries again."""
        stuck: tuple[str, AgentError] | None = None
        with self.lock:
            self._retry_stale_pins()
            wanted = {pool.name: pool for pool in self.settings.pools}
            for vm in [vm for vm in self.vms.values() if vm.pool]:
                pool = wanted.get(vm.pool)
                if vm.pending is not None or vm.state in BROKEN:
                    try:
                        with self._tending(vm.pool):
                            self._replace_member(vm)
                    except AgentError as error:
                        stuck = stuck or (vm.pool, error)
                elif pool is None or self._members(pool.name).index(vm) >= pool.size:
                    self._delete(vm)
                elif (
                    vm.state is VMState.WARMING
                    and now - self._warming_since.setdefault(vm.spec.name, now) >= pool.warmup_s
                ):
                    with self._tending(pool.name):
                        self._suspend_member(vm)
            short = next((p for p in self.settings.pools if len(self._members(p.name)) < p.size), None)
        more = short is not None and self._fill(short, now)
        if stuck is not None:
            pool_name, failure = stuck
            with self.lock:  # a later step of the same pool that went well does not hide it
                self.pool_errors[pool_name] = str(failure)
            raise failure
        return more

    def _fill(self, short: PoolSpec, now: float) -> bool:
        """Add one member to `short`; True while some pool still lacks members."""
        with self._tending(short.name):
            base = self._base_image(short.image)
            if base is not None:
                with self.lock:  # a pool larger than the host runs no qemu-img every period
                    self._refuse_unplaceable(self._member_request(short))
            with self._overlay_for(base) as prepared, self.lock:
                if len(self._members(short.name)) < short.size:  # (only this thread adds members)
                    self._add_member(short, now, base, prepared)
                return any(len(self._members(p.name)) < p.size for p in self.settings.pools)

    @contextlib.contextmanager
    def _tending(self, pool: str) -> Iterator[None]:
        """Keep why a step of `pool`'s upkeep failed (shown by `pool_status`),
        until one succeeds; the error goes on up to the PoolKeeper."""
        try:
            yield
        except AgentError as error:
            with self.lock:
                self.pool_errors[pool] = str(error)
            raise
        with self.lock:
            self.pool_errors.pop(pool, None)

    def _replace_member(self, vm: StoredVM) -> None:
        """Delete a broken member (the pool refills); a failure is the pool's
        error (the PoolKeeper logs it once)."""
        what = f"{vm.state}, {vm.pending.value} pending" if vm.pending is not None else vm.state
        try:
            self._delete(vm)
        except AgentError as error:
            raise AgentError(
                error.code, f"cannot replace the broken member {vm.spec.name} ({what}): {error.detail}"
            ) from error
        log.warning(
            "warm pool %s: deleted the broken member %s (%s), to be replaced", vm.pool, vm.spec.name, what
        )

    def _members(self, pool: str) -> list[StoredVM]:
        return [vm for vm in self.vms.values() if vm.pool == pool]

    def _member_request(self, pool: PoolSpec) -> VMRequest:
        """A new member of `pool`, under the first member name no VM or domain has."""
        taken = set(self.vms) | {vm.domain for vm in self.vms.values()}
        name = next(pool.member_name(i) for i in range(len(taken) + 1) if pool.member_name(i) not in taken)
        return VMRequest(name, pool.vcpus, pool.memory_mib, pool.ratio, owner="pool", image=pool.image)

    def _add_member(self, pool: PoolSpec, now: float, base: Path | None, prepared: Path | None) -> None:
        request = self._member_request(pool)
        self._create_cold(request, base, pool=pool.name, prepared=prepared)
        self._warming_since[request.name] = now

    def _suspend_member(self, vm: StoredVM) -> None:
        try:
            self.driver.suspend(vm.domain)
        except DriverError as error:
            raise AgentError("hypervisor failed", str(error)) from error
        self._warming_since.pop(vm.spec.name, None)
        self._set(vm.spec.name, VMState.POOLED, None)

    def _ready_member(self, request: VMRequest, base: Path | None) -> StoredVM | None:
        for pool in self.settings.pools:
            if (pool.vcpus, pool.memory_mib, pool.ratio) != (
                request.vcpus,
                request.memory_mib,
                request.ratio,
            ):
                continue
            for vm in self._members(pool.name):
                if vm.state is VMState.POOLED and vm.pending is None and vm.image == str(base or ""):
                    return vm
        return None

    def _hand_out(self, member: StoredVM, request: VMRequest) -> StoredVM:
        """Rename the member (allocator, then store, pending), resume it, done."""
        try:
            self.allocator.rename(member.spec.name, request.name)
        except PlacementError as error:
            raise AgentError(error.code.value, error.refusal.describe(), error.refusal) from error
        vm = replace(
            member, spec=replace(member.spec, name=request.name), owner=request.owner,
            state=VMState.RESUMING, pending=Pending.CREATE, pool="",
        )  # fmt: skip
        try:
            self.store.hand_out(member.spec.name, vm)
        except BaseException:
            self.allocator.rename(request.name, member.spec.name)
            raise
        del self.vms[member.spec.name]
        self.vms[request.name] = vm
        if member.spec.name in self._stale_pins:
            self._stale_pins[request.name] = self._stale_pins.pop(member.spec.name)
        crash_point("take:stored")
        try:
            self.driver.resume(vm.domain)
        except DriverError as error:
            self._delete(vm)
            raise AgentError("hypervisor failed", str(error)) from error
        with contextlib.suppress(DriverError):  # metadata only: the store has the owner already
            self.driver.relabel(vm.domain, vm.owner)
        self.on_hand_out()
        return self._set(request.name, VMState.RUNNING, None)
