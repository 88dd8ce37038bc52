"""libvirt domain XML from a typed description, and back.

Built with an XML library (ElementTree), never by pasting strings, so that a
VM name or a path cannot inject XML. The domain carries pinfold's metadata
(level, owner, base image) in its own namespace, one `<vcpupin>` per vCPU and an
`<emulatorpin>`, all on the cpuset of the VM's vNode (DESIGN.md: every vCPU is
pinned to the whole vNode, not 1:1), one virtio `<interface>` per NIC and the
QEMU guest agent's channel (libvirt learns addresses through it where no
libvirt network leases them). `DomainSpec.from_xml` reads a domain back
(libvirt's own XML of a defined domain included), which adoption at start uses.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace
from pathlib import Path

from pinfold.model.vm import NAME_PATTERN, NIC, nic_problem, valid_name
from pinfold.topology import format_cpulist, parse_cpulist

__all__ = [
    "NAMESPACE",
    "NAME_PATTERN",
    "DomainSpec",
    "DomainXMLError",
    "consoled_xml",
    "file_serial",
    "metadata_fragment",
    "relabeled_xml",
    "repinned_xml",
    "resized_xml",
    "valid_name",
]

#: XML namespace of pinfold's domain metadata.
NAMESPACE = "https://pinfold.dev/xmlns/domain/1"
_PREFIX = "pinfold"
ET.register_namespace(_PREFIX, NAMESPACE)

DOMAIN_TYPES = ("kvm", "qemu")
#: the virtio-serial port qemu-guest-agent listens on (libvirt's SRC_AGENT talks to it)
GUEST_AGENT_CHANNEL = "org.qemu.guest_agent.0"
#: the interface types pinfold makes (and reads back)
_KINDS = ("network", "bridge")


class DomainXMLError(ValueError):
    """A domain description or document pinfold cannot use."""


@dataclass(frozen=True)
class DomainSpec:
    """What pinfold needs a libvirt domain to be.

    `disk` is the qcow2 overlay the agent created (None for a diskless guest);
    `kernel`/`initrd`/`cmdline` boot a kernel directly (the test guests) instead
    of from the disk; `serial_log` keeps the serial console's output in a file
    (the serial stays a pty, which libvirt can attach a console to);
    `nics` are its virtio NICs, each with its MAC (the agent chose it); `seed`
    is the VM's cloud-init seed ISO, attached as a read-only CD-ROM on the IDE
    bus: machine type `pc` has that controller built in, and guest kernels
    drive it with ata_piix (Debian's cloud kernel has no AHCI driver for SATA).
    """

    name: str
    vcpus: int
    memory_mib: int
    cpuset: frozenset[int]
    level: float
    owner: str = ""
    image: str = ""
    domain_type: str = "kvm"
    disk: Path | None = None
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str = ""
    serial_log: Path | None = None
    nics: tuple[NIC, ...] = ()
    seed: Path | None = None

    def __post_init__(self) -> None:
        if not valid_name(self.name):
            raise DomainXMLError(
                f"invalid domain name {self.name!r}: use 1-63 letters, digits, '.', '_', '-'"
            )
        if self.vcpus < 1 or self.memory_mib < 1:
            raise DomainXMLError("a domain needs at least one vCPU and 1 MiB")
        if not self.cpuset:
            raise DomainXMLError("a domain needs a non-empty cpuset")
        if self.domain_type not in DOMAIN_TYPES:
            raise DomainXMLError(f"domain type must be one of {', '.join(DOMAIN_TYPES)}")
        for nic in self.nics:
            problem = nic_problem(nic) or (None if nic.mac else "nic: a domain's NIC needs its MAC")
            if problem is not None:
                raise DomainXMLError(problem)

    def with_cpuset(self, cpuset: frozenset[int]) -> DomainSpec:
        return replace(self, cpuset=cpuset)

    def to_xml(self) -> str:
        cpuset = format_cpulist(self.cpuset)
        domain = ET.Element("domain", type=self.domain_type)
        ET.SubElement(domain, "name").text = self.name
        metadata = ET.SubElement(ET.SubElement(domain, "metadata"), _tag("vm"))
        ET.SubElement(metadata, _tag("level")).text = repr(float(self.level))
        ET.SubElement(metadata, _tag("owner")).text = self.owner
        ET.SubElement(metadata, _tag("image")).text = self.image
        ET.SubElement(domain, "memory", unit="MiB").text = str(self.memory_mib)
        ET.SubElement(domain, "vcpu", placement="static", cpuset=cpuset).text = str(self.vcpus)
        cputune = ET.SubElement(domain, "cputune")
        for vcpu in range(self.vcpus):
            ET.SubElement(cputune, "vcpupin", vcpu=str(vcpu), cpuset=cpuset)
        ET.SubElement(cputune, "emulatorpin", cpuset=cpuset)
        os = ET.SubElement(domain, "os")
        ET.SubElement(os, "type", arch="x86_64", machine="pc").text = "hvm"
        if self.kernel is not None:
            ET.SubElement(os, "kernel").text = str(self.kernel)
            if self.initrd is not None:
                ET.SubElement(os, "initrd").text = str(self.initrd)
            ET.SubElement(os, "cmdline").text = self.cmdline
        else:
            ET.SubElement(os, "boot", dev="hd")
        ET.SubElement(ET.SubElement(domain, "features"), "acpi")
        ET.SubElement(domain, "on_poweroff").text = "destroy"
        ET.SubElement(domain, "on_reboot").text = "restart"
        ET.SubElement(domain, "on_crash").text = "destroy"
        devices = ET.SubElement(domain, "devices")
        if self.disk is not None:
            disk = ET.SubElement(devices, "disk", type="file", device="disk")
            ET.SubElement(disk, "driver", name="qemu", type="qcow2")
            ET.SubElement(disk, "source", file=str(self.disk))
            ET.SubElement(disk, "target", dev="vda", bus="virtio")
        if self.seed is not None:
            cdrom = ET.SubElement(devices, "disk", type="file", device="cdrom")
            ET.SubElement(cdrom, "driver", name="qemu", type="raw")
            ET.SubElement(cdrom, "source", file=str(self.seed))
            ET.SubElement(cdrom, "target", dev="hdc", bus="ide")
            ET.SubElement(cdrom, "readonly")
        if self.serial_log is not None:
            # a pty (libvirt attaches a console only to a pty) whose output is logged as well
            serial = ET.SubElement(devices, "serial", type="pty")
            ET.SubElement(serial, "log", file=str(self.serial_log), append="on")
            ET.SubElement(serial, "target", port="0")
            console = ET.SubElement(devices, "console", type="pty")
            ET.SubElement(console, "target", type="serial", port="0")
        else:
            ET.SubElement(ET.SubElement(devices, "serial", type="pty"), "target", port="0")
        for nic in self.nics:
            _interface(devices, nic)
        channel = ET.SubElement(devices, "channel", type="unix")
        ET.SubElement(channel, "target", type="virtio", name=GUEST_AGENT_CHANNEL)
        ET.SubElement(devices, "memballoon", model="virtio")
        ET.indent(domain)
        return ET.tostring(domain, encoding="unicode")

    @classmethod
    def from_xml(cls, document: str) -> DomainSpec:
        """Read a domain back; DomainXMLError when it is not a pinfold domain."""
        domain = _parse(document)
        metadata = _metadata(domain)
        try:
            name = _text(domain, "name")
            memory = _memory_mib(domain.find("memory"))
            vcpus = int(_text(domain, "vcpu"))
            pin = domain.find("cputune/vcpupin")
            vcpu_element = domain.find("vcpu")
            cpuset_text = pin.get("cpuset") if pin is not None else None
            if cpuset_text is None and vcpu_element is not None:
                cpuset_text = vcpu_element.get("cpuset")
            if not cpuset_text:
                raise DomainXMLError("the domain is not pinned")
            disk = domain.find("devices/disk[@device='disk']/source")
            seed = domain.find("devices/disk[@device='cdrom']/source")
            kernel = domain.find("os/kernel")
            initrd = domain.find("os/initrd")
            # a pty's <log file> (today's domains), or a file serial (those made before)
            serial = domain.find("devices/serial/log")
            if serial is None:
                serial = domain.find("devices/serial[@type='file']/source")
            return cls(
                name=name,
                vcpus=vcpus,
                memory_mib=memory,
                cpuset=frozenset(parse_cpulist(cpuset_text)),
                level=float(_text(metadata, _tag("level"))),
                owner=metadata.findtext(_tag("owner")) or "",
                image=metadata.findtext(_tag("image")) or "",
                domain_type=domain.get("type", "kvm"),
                disk=Path(disk.get("file", "")) if disk is not None and disk.get("file") else None,
                kernel=Path(kernel.text) if kernel is not None and kernel.text else None,
                initrd=Path(initrd.text) if initrd is not None and initrd.text else None,
                cmdline=domain.findtext("os/cmdline") or "",
                serial_log=_serial_log(serial),
                nics=tuple(_nic(i) for i in domain.iterfind("devices/interface") if i.get("type") in _KINDS),
                seed=Path(seed.get("file", "")) if seed is not None and seed.get("file") else None,
            )
        except (TypeError, ValueError) as exc:
            if isinstance(exc, DomainXMLError):
                raise
            raise DomainXMLError(f"malformed pinfold domain: {exc}") from None


def _interface(devices: ET.Element, nic: NIC) -> None:
    """`<interface type='network'|'bridge'>` with its MAC, source and a virtio model."""
    interface = ET.SubElement(devices, "interface", type=nic.kind)
    ET.SubElement(interface, "mac", address=nic.mac)
    ET.SubElement(interface, "source", {nic.kind: nic.source})
    ET.SubElement(interface, "model", type="virtio")


def _nic(interface: ET.Element) -> NIC:
    """A NIC read back from an `<interface>` of one of `_KINDS` (libvirt adds
    its own elements: only the type, the MAC and the source are read; other
    kinds of interface, added by hand, are not pinfold's and are left out)."""
    kind = interface.get("type", "")
    source = interface.find("source")
    mac = interface.find("mac")
    name = source.get(kind, "") if source is not None else ""
    address = (mac.get("address", "") if mac is not None else "").lower()
    return NIC(network=name, mac=address) if kind == "network" else NIC(bridge=name, mac=address)


def repinned_xml(document: str, cpuset: frozenset[int]) -> str:
    """A domain document (libvirt's own, with its uuid and the devices it
    added) with every vCPU and the emulator pinned to `cpuset` instead."""
    if not cpuset:
        raise DomainXMLError("empty cpuset")
    domain = _parse(document)
    text = format_cpulist(cpuset)
    vcpu = domain.find("vcpu")
    if vcpu is None or vcpu.text is None:
        raise DomainXMLError("missing <vcpu>")
    vcpu.set("cpuset", text)
    cputune = domain.find("cputune")
    if cputune is None:
        cputune = ET.SubElement(domain, "cputune")
    for old in cputune.findall("vcpupin") + cputune.findall("emulatorpin"):
        cputune.remove(old)
    for index in range(int(vcpu.text)):
        cputune.insert(index, ET.Element("vcpupin", vcpu=str(index), cpuset=text))
    cputune.insert(int(vcpu.text), ET.Element("emulatorpin", cpuset=text))
    return ET.tostring(domain, encoding="unicode")


def resized_xml(document: str, vcpus: int, memory_mib: int) -> str:
    """A domain document given `vcpus` and `memory_mib` (libvirt applies a
    persistent definition at the next boot), its pins kept for every vCPU."""
    if vcpus < 1 or memory_mib < 1:
        raise DomainXMLError("vcpus and memory must be positive")
    domain = _parse(document)
    vcpu = domain.find("vcpu")
    if vcpu is None:
        raise DomainXMLError("missing <vcpu>")
    vcpu.text = str(vcpus)
    for tag in ("memory", "currentMemory"):
        element = domain.find(tag)
        if element is not None:
            element.text = str(memory_mib * 1024)
            element.set("unit", "KiB")
    cpuset = vcpu.get("cpuset")
    resized = ET.tostring(domain, encoding="unicode")
    return repinned_xml(resized, frozenset(parse_cpulist(cpuset))) if cpuset else resized


def consoled_xml(document: str) -> str | None:
    """A domain document from before consoles (its serial a file: pinfold
    wrote the console to a log file then) made today's: the serial a pty
    that logs to that same file (appending), with a console on it (libvirt
    attaches a console only to a pty); its other devices as they are. None
    when its serial is no file (nothing to change)."""
    domain = _parse(document)
    devices = domain.find("devices")
    serial = devices.find("serial[@type='file']") if devices is not None else None
    if devices is None or serial is None:
        return None
    source = serial.find("source")
    path = source.get("path") if source is not None else None
    target = serial.find("target")
    at = list(devices).index(serial)
    for old in [serial, *devices.findall("console")]:  # libvirt mirrors the file serial as a console
        devices.remove(old)
    pty = ET.Element("serial", type="pty")
    if path:
        ET.SubElement(pty, "log", file=path, append="on")
    pty.append(target if target is not None else ET.Element("target", port="0"))
    console = ET.Element("console", type="pty")
    ET.SubElement(console, "target", type="serial", port="0")
    devices.insert(at, pty)
    devices.insert(at + 1, console)
    return ET.tostring(domain, encoding="unicode")


def file_serial(document: str) -> bool:
    """Whether a domain document's serial is a file (a domain defined before
    consoles): a guest running with it has no console to attach to."""
    return _parse(document).find("devices/serial[@type='file']") is not None


def relabeled_xml(document: str, owner: str) -> str:
    """A domain document whose pinfold metadata names another owner."""
    domain = _parse(document)
    metadata = _metadata(domain)
    element = metadata.find(_tag("owner"))
    if element is None:
        element = ET.SubElement(metadata, _tag("owner"))
    element.text = owner
    return ET.tostring(domain, encoding="unicode")


def metadata_fragment(document: str) -> str:
    """The pinfold metadata element of a domain document, without its
    namespace (libvirt's setMetadata adds it back under the key it is given)."""
    metadata = _metadata(_parse(document))
    bare = ET.Element("vm")
    for child in metadata:
        ET.SubElement(bare, child.tag.split("}", 1)[-1]).text = child.text
    return ET.tostring(bare, encoding="unicode")


def _serial_log(element: ET.Element | None) -> Path | None:
    """The log file a serial's <log file> or <source path> names, if any."""
    if element is None:
        return None
    path = element.get("file") or element.get("path")
    return Path(path) if path else None


def _parse(document: str) -> ET.Element:
    try:
        return ET.fromstring(document)
    except ET.ParseError as exc:
        raise DomainXMLError(f"not XML: {exc}") from None


def _metadata(domain: ET.Element) -> ET.Element:
    """The domain's pinfold metadata element; DomainXMLError when it has none."""
    metadata = domain.find(f"metadata/{_tag('vm')}")
    if metadata is None:
        raise DomainXMLError("the domain carries no pinfold metadata")
    return metadata


def _tag(name: str) -> str:
    return f"{{{NAMESPACE}}}{name}"


def _text(element: ET.Element, path: str) -> str:
    text = element.findtext(path)
    if text is None:
        raise DomainXMLError(f"missing <{path}>")
    return text.strip()


_UNITS = {"b": 1 / 2**20, "bytes": 1 / 2**20, "k": 1 / 1024, "kib": 1 / 1024, "m": 1, "mib": 1, "g": 1024,
          "gib": 1024}  # fmt: skip


def _memory_mib(element: ET.Element | None) -> int:
    if element is None or element.text is None:
        raise DomainXMLError("missing <memory>")
    unit = element.get("unit", "KiB").lower()
    if unit not in _UNITS:
        raise DomainXMLError(f"unknown memory unit {unit!r}")
    return round(int(element.text) * _UNITS[unit])
