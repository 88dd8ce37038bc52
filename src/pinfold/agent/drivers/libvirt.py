"""The `libvirt` driver. libvirt errors are translated here, once, into
DriverError; nothing above this module imports libvirt."""

from __future__ import annotations

import ipaddress
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import libvirt

from pinfold.agent.domain import (
    NAMESPACE,
    DomainSpec,
    DomainXMLError,
    consoled_xml,
    file_serial,
    metadata_fragment,
    relabeled_xml,
    repinned_xml,
    resized_xml,
)
from pinfold.agent.drivers.base import Console, DriverError, GuestInfo, GuestState, Migrated, MigrationTarget
from pinfold.agent.networks import NetworkInfo, nat_network_xml, network_info_from_xml
from pinfold.model.failpoints import crash_point
from pinfold.tls import url_host

__all__ = ["LibvirtDriver"]

_STATES = {
    libvirt.VIR_DOMAIN_RUNNING: GuestState.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: GuestState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTOFF: GuestState.SHUTOFF,
}
_CODES = {
    libvirt.VIR_ERR_NO_DOMAIN: "not found",
    libvirt.VIR_ERR_NO_NETWORK: "not found",
    libvirt.VIR_ERR_OPERATION_INVALID: "invalid",
    libvirt.VIR_ERR_INVALID_ARG: "invalid",
    libvirt.VIR_ERR_XML_ERROR: "invalid",
    libvirt.VIR_ERR_XML_DETAIL: "invalid",
}


@contextmanager
def _translated(action: str) -> Iterator[None]:
    try:
        yield
    except libvirt.libvirtError as exc:
        message = exc.get_error_message() or str(exc)
        code = _CODES.get(exc.get_error_code(), "failed")
        if "already exists" in message:
            code = "already exists"
        raise DriverError(code, f"{action}: {message}") from exc


#: why a guest started before consoles existed has none (`console`), until its next boot
NO_CONSOLE = (
    "{name} runs with the serial of a domain defined before pinfold had consoles (a log file, not a "
    "pty), so it has no console while it runs: it gets one at its next boot by the agent (shut it "
    "down, then start it); the running guest is left alone"
)
#: how often a migration past its time limit is asked again to abort while libvirt refuses
ABORT_RETRY_S = 0.5
#: how long a finished migration waits for libvirt's statistics of its job (its downtime)
JOB_STATS_WAIT_S = 2.0
#: how long a console write waits for a full stream to take its bytes
CONSOLE_SEND_TIMEOUT_S = 5.0
_CONSOLE_CHUNK = 65536
_events_started = threading.Lock()
_events_running = False


def _start_event_loop() -> None:
    """libvirt's default event loop, run by one daemon thread for the process.

    Why: a console is a non-blocking virStream whose data arrives through
    stream callbacks, which only an event loop runs (as `virsh console` does).
    A blocking recv in a thread per console was the other way, but nothing
    could wake that thread when its client leaves before the guest prints
    again. The loop must be registered before the connection is opened, hence here."""
    global _events_running
    with _events_started:
        if _events_running:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _events_running = True


class _LibvirtConsole:
    """A domain's console stream: bytes read in the event loop's callback go to
    `output`; `closed` is called once when the stream ends on libvirt's side."""

    def __init__(
        self, name: str, stream: Any, output: Callable[[bytes], None], closed: Callable[[str], None]
    ) -> None:
        self._name = name
        self._stream = stream
        self._output = output
        self._closed = closed
        self._lock = threading.Lock()
        self._open = True
        self._writable = threading.Event()

    def on_event(self, stream: Any, events: int, _opaque: object) -> None:
        if events & libvirt.VIR_STREAM_EVENT_WRITABLE:
            self._writable.set()
            with suppress(libvirt.libvirtError):
                stream.eventUpdateCallback(libvirt.VIR_STREAM_EVENT_READABLE)
        if events & libvirt.VIR_STREAM_EVENT_READABLE:
            self._drain(stream)
        if events & (libvirt.VIR_STREAM_EVENT_ERROR | libvirt.VIR_STREAM_EVENT_HANGUP):
            self._end(f"the console of {self._name} closed (the guest stopped or was deleted)")

    def _drain(self, stream: Any) -> None:
        while True:
            try:
                data = stream.recv(_CONSOLE_CHUNK)
            except libvirt.libvirtError as error:
                self._end(f"the console of {self._name} failed: {error.get_error_message()}")
                return
            if data == -2:  # nothing more for now
                return
            if not data:
                self._end(f"the console of {self._name} closed (the guest stopped or was deleted)")
                return
            self._output(data)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        deadline = time.monotonic() + CONSOLE_SEND_TIMEOUT_S
        while view:
            if not self._open:
                raise DriverError("invalid", f"the console of {self._name} is closed")
            with _translated(f"write to the console of {self._name}"):
                sent = self._stream.send(bytes(view))
                if sent == -2:  # the stream is full: wait until the loop says it takes more
                    self._writable.clear()
                    self._stream.eventUpdateCallback(
                        libvirt.VIR_STREAM_EVENT_READABLE | libvirt.VIR_STREAM_EVENT_WRITABLE
                    )
                    if not self._writable.wait(max(0.0, deadline - time.monotonic())):
                        raise DriverError("failed", f"the console of {self._name} takes no input")
                    continue
            view = view[sent:]

    def close(self) -> None:
        with self._lock:
            if not self._open:
                return
            self._open = False
        self._teardown()

    def _end(self, reason: str) -> None:
        with self._lock:
            if not self._open:
                return
            self._open = False
        self._teardown()
        self._closed(reason)

    def _teardown(self) -> None:
        with suppress(libvirt.libvirtError):
            self._stream.eventRemoveCallback()
        with suppress(libvirt.libvirtError):
            self._stream.abort()


class LibvirtDriver:
    """Guests as libvirt domains on `uri` (qemu:///system in production)."""

    def __init__(self, uri: str = "qemu:///system", poll_s: float = 0.2) -> None:
        # libvirt's default handler prints every error on stderr, raised or not: asking a
        # guest without qemu-guest-agent for its addresses would write a line at every poll.
        # Every error still raises, and is translated below (process-wide: the agent's own).
        libvirt.registerErrorHandler(_quiet, None)
        _start_event_loop()
        with _translated(f"connect to {uri}"):
            self._conn = libvirt.open(uri)
        self.uri = uri
        self.poll_s = poll_s

    def close(self) -> None:
        with _translated("close"):
            self._conn.close()

    @property
    def host_cpu_count(self) -> int:
        with _translated("read the host CPU map"):
            return int(self._conn.getCPUMap()[0])

    def create(self, spec: DomainSpec) -> None:
        with _translated(f"define {spec.name}"):
            domain = self._conn.defineXML(spec.to_xml())
        crash_point("create:defined")
        try:
            with _translated(f"start {spec.name}"):
                domain.create()
        except DriverError:
            with _translated(f"undefine {spec.name} after a failed start"):
                domain.undefine()
            raise

    def delete(self, name: str) -> None:
        domain = self._domain(name)
        with _translated(f"delete {name}"):
            if domain.isActive():
                domain.destroy()
            domain.undefine()

    def start(self, name: str) -> None:
        """Boot a shut-off guest: one defined before consoles gets one first
        (`give_console`), its next boot being now."""
        domain = self._require(name, {GuestState.SHUTOFF})
        self.give_console(name)
        with _translated(f"start {name}"):
            domain.create()

    def give_console(self, name: str) -> bool:
        """Redefine the persistent definition of a guest defined before
        consoles (`domain.consoled_xml`): libvirt keeps a running guest's live
        definition, so it runs on untouched and boots with the console next."""
        domain = self._domain(name)
        with _translated(f"read {name}"):
            persistent = domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        try:
            document = consoled_xml(persistent)
        except DomainXMLError as error:
            raise DriverError("invalid", f"give {name} a console: {error}") from error
        if document is None:
            return False
        with _translated(f"give {name} a console"):
            self._conn.defineXML(document)
        return True

    def shutdown(self, name: str, timeout_s: float) -> None:
        domain = self._require(name, {GuestState.RUNNING, GuestState.PAUSED})
        with _translated(f"shut down {name}"):
            if domain.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                domain.resume()  # a paused guest cannot see the ACPI power button
            domain.shutdown()
        if not self._wait(lambda: not domain.isActive(), timeout_s):
            with _translated(f"force off {name}"):
                if domain.isActive():
                    domain.destroy()

    def suspend(self, name: str) -> None:
        domain = self._require(name, {GuestState.RUNNING})
        with _translated(f"suspend {name}"):
            domain.suspend()

    def resume(self, name: str) -> None:
        domain = self._require(name, {GuestState.PAUSED})
        with _translated(f"resume {name}"):
            domain.resume()

    def repin(self, name: str, cpuset: frozenset[int]) -> None:
        """Live: pin each vCPU and the emulator of the running domain.
        Persistent: redefine the domain from its own persistent XML with the
        new cpuset, so that the pinning survives a restart of the guest."""
        if not cpuset:
            raise DriverError("invalid", "empty cpuset")
        domain = self._domain(name)
        size = self.host_cpu_count
        if max(cpuset) >= size:
            raise DriverError("invalid", f"CPU {max(cpuset)} does not exist on this host ({size} CPUs)")
        spec = self._info(domain).spec
        if spec is None:
            raise DriverError("invalid", f"domain '{name}' is not a pinfold domain")
        cpumap = tuple(cpu in cpuset for cpu in range(size))
        with _translated(f"re-pin {name}"):
            if domain.isActive():
                for vcpu in range(spec.vcpus):
                    domain.pinVcpuFlags(vcpu, cpumap, libvirt.VIR_DOMAIN_AFFECT_CURRENT)
                domain.pinEmulator(cpumap, libvirt.VIR_DOMAIN_AFFECT_CURRENT)
            persistent = domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
            self._conn.defineXML(repinned_xml(persistent, cpuset))

    def relabel(self, name: str, owner: str) -> None:
        domain = self._domain(name)
        with _translated(f"relabel {name}"):
            try:
                persistent = relabeled_xml(domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), owner)
                self._conn.defineXML(persistent)
                if domain.isActive():
                    live = relabeled_xml(domain.XMLDesc(0), owner)
                    domain.setMetadata(
                        libvirt.VIR_DOMAIN_METADATA_ELEMENT, metadata_fragment(live), "pinfold", NAMESPACE,
                        libvirt.VIR_DOMAIN_AFFECT_LIVE,
                    )  # fmt: skip
            except DomainXMLError as error:
                raise DriverError("invalid", str(error)) from error

    def resize(self, name: str, vcpus: int, memory_mib: int) -> None:
        domain = self._domain(name)
        with _translated(f"resize {name}"):
            persistent = domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
            try:
                self._conn.defineXML(resized_xml(persistent, vcpus, memory_mib))
            except DomainXMLError as error:
                raise DriverError("invalid", str(error)) from error

    def stats(self) -> dict[str, tuple[int, float]]:
        """Bulk domain stats (one call for every running domain): `cpu.time`
        and the balloon's resident size (`balloon.rss`, KiB), else its size."""
        with _translated("read domain stats"):
            records = self._conn.getAllDomainStats(
                libvirt.VIR_DOMAIN_STATS_CPU_TOTAL | libvirt.VIR_DOMAIN_STATS_BALLOON,
                libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE,
            )
        out: dict[str, tuple[int, float]] = {}
        for domain, values in records:
            kib = values.get("balloon.rss", values.get("balloon.current", 0))
            out[domain.name()] = (int(values.get("cpu.time", 0)), kib / 1024)
        return out

    def migrate(self, name: str, target: MigrationTarget) -> Migrated:
        """Live, peer to peer: this host's daemon drives every phase with the
        target's (`target.libvirt_uri`), so an agent killed meanwhile cuts
        nothing short (a client-managed migration would stop between phases,
        the guest paused on both sides). The destination and persistent
        definitions are this domain's migratable XML pinned to the target's
        CPUs (its uuid, devices and NICs with their MACs kept). On failure
        libvirt resumes the guest here and removes the target's copy. A
        migration still running after `target.timeout_s` is cancelled
        (`abortJob`, from a timer thread: the call blocks until the job
        ends) and fails so, as "timed out"."""
        if not target.libvirt_uri:
            raise DriverError("invalid", f"migrate {name}: the target gave no libvirt URI to migrate to")
        domain = self._require(name, {GuestState.RUNNING})
        with _translated(f"read {name} for its migration"):
            document = domain.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE)
        try:
            destination = repinned_xml(document, target.cpuset)
        except DomainXMLError as error:
            raise DriverError("invalid", f"migrate {name}: {error}") from error
        params, flags = migration_call(destination, target)
        completed: dict[str, Any] = {}
        done = threading.Event()

        def on_completed(_conn: object, _domain: object, stats: dict[str, Any], _opaque: object) -> None:
            completed.update(stats)
            done.set()

        with _translated(f"watch the migration of {name}"):
            watch = self._conn.domainEventRegisterAny(
                domain, libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, on_completed, None
            )
        started = time.monotonic()
        finished, expired = threading.Event(), threading.Event()
        if target.timeout_s is not None:
            watchdog = (domain, target.timeout_s, finished, expired)
            threading.Thread(target=_cancel_after, args=watchdog, name=f"migration limit {name}").start()
        try:
            try:
                with _translated(f"migrate {name} to {target.libvirt_uri}"):
                    domain.migrateToURI3(target.libvirt_uri, params, flags)
            except DriverError as error:
                if expired.is_set():
                    detail = f"migrate {name}: not done in {target.timeout_s:g} s, cancelled ({error.detail})"
                    raise DriverError("timed out", detail) from error
                raise
            seconds = time.monotonic() - started
            done.wait(JOB_STATS_WAIT_S)  # the event comes on the event loop's thread
        finally:
            finished.set()
            with suppress(libvirt.libvirtError):
                self._conn.domainEventDeregisterAny(watch)
        elapsed = completed.get("time_elapsed")  # ms, libvirt's own job time
        downtime = completed.get("downtime")
        return Migrated(
            seconds=elapsed / 1000 if elapsed is not None else seconds,
            downtime_ms=int(downtime) if downtime is not None else None,
        )

    def migrating_out(self, name: str) -> bool:
        """libvirt's job on the domain is an outgoing migration (none: no job,
        or no such domain)."""
        try:
            domain = self._conn.lookupByName(name)
            stats = domain.jobStats()
        except libvirt.libvirtError:
            return False
        active = stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) != libvirt.VIR_DOMAIN_JOB_NONE
        return bool(active and stats.get("operation") == libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT)

    def receive(self, spec: DomainSpec) -> None:
        """A migrated guest arrives running and persistent (PERSIST_DEST):
        nothing to make here, only to check that it came."""
        self._require(spec.name, {GuestState.RUNNING})

    def guests(self) -> list[GuestInfo]:
        """Every domain. One that another client deletes between the listing
        and its reading is left out: it is gone, not an error of the listing."""
        with _translated("list domains"):
            domains = self._conn.listAllDomains()
        found: list[GuestInfo] = []
        for domain in domains:
            try:
                found.append(self._info(domain))
            except DriverError as error:
                if error.code != "not found":
                    raise
        return found

    def info(self, name: str) -> GuestInfo:
        return self._info(self._domain(name))

    def addresses(self, name: str) -> list[str]:
        """The IPv4 addresses of the guest's NICs (`nic_addresses`)."""
        found: list[str] = []
        for addresses in self.nic_addresses(name).values():
            found += [a for a in addresses if ":" not in a and a not in found]
        return found

    def nic_addresses(self, name: str) -> dict[str, list[str]]:
        """Per MAC, from the DHCP leases of its libvirt network as libvirt
        matches them to this running domain's MACs (never the bare lease list:
        leases outlive domains), then, for the MACs that have none, from the
        guest agent; neither may know any (no lease yet, no agent in the guest)."""
        domain = self._domain(name)
        spec = self._info(domain).spec
        macs = {nic.mac for nic in spec.nics} if spec is not None else set()
        found: dict[str, list[str]] = {}
        for source in (
            libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE,
            libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT,
        ):
            if macs and macs <= found.keys():
                break  # every NIC has its lease: the guest agent is not asked
            try:
                interfaces = domain.interfaceAddresses(source) or {}
            except libvirt.libvirtError:
                continue  # no network driver, no agent: the next source, or none
            for interface in interfaces.values():
                mac = (interface.get("hwaddr") or "").lower()
                addresses = _usable([entry["addr"] for entry in interface.get("addrs") or ()])
                if mac and addresses and mac not in found:
                    found[mac] = addresses
        return found

    def networks(self) -> list[NetworkInfo]:
        with _translated("list networks"):
            networks = self._conn.listAllNetworks()
        found = []
        for network in networks:
            try:
                with _translated("read a network"):
                    found.append(network_info_from_xml(network.XMLDesc(0), bool(network.isActive())))
            except DriverError as error:  # gone meanwhile: not an error of the listing
                if error.code != "not found":
                    raise
        return found

    def bridge_exists(self, name: str) -> bool:
        """A bridge where libvirtd runs, asked of libvirt's interface driver:
        the daemon may live in another network namespace or on another
        machine (qemu+ssh), where the agent's own /sys/class/net says nothing
        (it refused every bridge of the network lab's namespace). A daemon
        without an interface driver: the agent's own view for a local URI,
        and no bridge at all for a remote one (none can be checked, and a
        domain that cannot start on a missing one would be a 5xx, not a 422)."""
        try:
            document = self._conn.interfaceLookupByName(name).XMLDesc(0)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_INTERFACE:
                return False
            if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                raise DriverError("failed", f"look up interface {name}: {exc.get_error_message()}") from exc
            return (
                is_local_uri(self.uri)
                and "/" not in name
                and (Path("/sys/class/net") / name / "bridge").is_dir()
            )
        return ET.fromstring(document).get("type") == "bridge"

    def define_network(self, name: str, subnet: ipaddress.IPv4Network) -> None:
        with _translated(f"define network {name}"):
            network = self._conn.networkDefineXML(nat_network_xml(name, subnet))
        try:
            with _translated(f"start network {name}"):
                network.create()
                network.setAutostart(1)
        except DriverError:
            with _translated(f"undefine network {name} after a failed start"):
                network.undefine()
            raise

    def start_network(self, name: str) -> None:
        with _translated(f"start network {name}"):
            self._conn.networkLookupByName(name).create()

    def console(self, name: str, output: Callable[[bytes], None], closed: Callable[[str], None]) -> Console:
        """The domain's console (its serial pty) as a non-blocking stream, read
        by libvirt's event loop (see `_start_event_loop`)."""
        domain = self._require(name, {GuestState.RUNNING})
        with _translated(f"read {name}"):
            live = domain.XMLDesc(0)
        if file_serial(live):
            raise DriverError("invalid", NO_CONSOLE.format(name=name))
        with _translated(f"open the console of {name}"):
            stream = self._conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
            domain.openConsole(None, stream, 0)
        console = _LibvirtConsole(name, stream, output, closed)
        try:
            with _translated(f"watch the console of {name}"):
                stream.eventAddCallback(libvirt.VIR_STREAM_EVENT_READABLE, console.on_event, None)
        except DriverError:
            with suppress(libvirt.libvirtError):
                stream.abort()
            raise
        return console

    def _require(self, name: str, states: set[GuestState]) -> Any:
        """The domain, if it is in one of `states` (the same check on every
        hypervisor, rather than each one's own error for a wrong state)."""
        domain = self._domain(name)
        with _translated(f"read the state of {name}"):
            state = _STATES.get(domain.state()[0], GuestState.OTHER)
        if state not in states:
            raise DriverError("invalid", f"domain '{name}' is {state.value}")
        return domain

    def _domain(self, name: str) -> Any:
        with _translated(f"look up {name}"):
            return self._conn.lookupByName(name)

    def _info(self, domain: Any) -> GuestInfo:
        with _translated(f"read {domain.name()}"):
            state = _STATES.get(domain.state()[0], GuestState.OTHER)
            xml = domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        try:
            spec: DomainSpec | None = DomainSpec.from_xml(xml)
        except DomainXMLError:
            spec = None
        return GuestInfo(domain.name(), state, spec)

    def _wait(self, done: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with _translated("poll"):
                if done():
                    return True
            time.sleep(self.poll_s)
        return False


def migration_call(destination: str, target: MigrationTarget) -> tuple[dict[str, Any], int]:
    """`migrateToURI3`'s parameters and flags for a migration to `target`
    with `destination` as the domain's XML there, running and persistent.
    QEMU's stream (and the disks' copy) go where the target said: its daemon
    cannot be told to listen on loopback in its configuration (it refuses a
    local `migration_host`), so the URI and listen address come per call."""
    params: dict[str, Any] = {
        libvirt.VIR_MIGRATE_PARAM_DEST_XML: destination,
        libvirt.VIR_MIGRATE_PARAM_PERSIST_XML: destination,
    }
    flags = (
        libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_PERSIST_DEST
        | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    )  # fmt: skip
    host = urlsplit(target.migrate_uri).hostname if target.migrate_uri else None
    if target.migrate_uri:
        params[libvirt.VIR_MIGRATE_PARAM_URI] = target.migrate_uri
    if host:
        params[libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS] = host
    if target.copy_disks:
        flags |= libvirt.VIR_MIGRATE_NON_SHARED_DISK
        if host:
            params[libvirt.VIR_MIGRATE_PARAM_DISKS_URI] = f"tcp://{url_host(host)}"
    if target.unsafe:
        flags |= libvirt.VIR_MIGRATE_UNSAFE
    return params, flags


def _cancel_after(domain: Any, timeout_s: float, finished: threading.Event, expired: threading.Event) -> None:
    """Once a migration has run `timeout_s` without `finished`, abort its job
    (libvirt resumes the guest where it was and removes the target's copy),
    asked again while libvirt refuses (a phase that cannot be aborted) and the
    migration goes on. One that ends meanwhile keeps its own outcome."""
    if finished.wait(timeout_s):
        return
    expired.set()
    while not finished.is_set():
        try:
            domain.abortJob()
        except libvirt.libvirtError:
            finished.wait(ABORT_RETRY_S)
        else:
            return


def _quiet(_context: object, _error: object) -> None:
    """libvirt's error handler: say nothing (the error raises anyway)."""


def _usable(addresses: list[str]) -> list[str]:
    """IPv4 first, then IPv6, without loopback or link-local addresses (the
    guest agent reports those too; nobody reaches a guest on them)."""
    kept = []
    for text in addresses:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            continue
        if not (address.is_loopback or address.is_link_local):
            kept.append(address)
    return [str(a) for a in sorted(kept, key=lambda a: a.version)]


def is_local_uri(uri: str) -> bool:
    """Whether a libvirt URI names a daemon on this machine: no host and no
    remote transport (qemu:///system, qemu+unix:///system?socket=...)."""
    parts = urlsplit(uri)
    transport = parts.scheme.partition("+")[2]
    return not parts.hostname and transport in ("", "unix")
