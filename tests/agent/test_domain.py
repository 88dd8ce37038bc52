"""Domain XML: a golden document, round trips (ours and libvirt's own XML),
and names or paths that must not become XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pinfold.agent.domain import GUEST_AGENT_CHANNEL, DomainSpec, DomainXMLError, valid_name
from pinfold.model.vm import NIC
from tests.agent.conftest import libvirt_or_skip

DATA = Path(__file__).parent / "data"


def sample(**changes: object) -> DomainSpec:
    values: dict[str, object] = {
        "name": "web-1",
        "vcpus": 2,
        "memory_mib": 2048,
        "cpuset": frozenset({1, 2, 3, 5, 6, 7}),
        "level": 2.0,
        "owner": "alice",
        "image": "/var/lib/pinfold/images/debian.qcow2",
        "domain_type": "qemu",
        "disk": Path("/var/lib/pinfold/disks/web-1.qcow2"),
        "nics": (NIC(network="default", mac="52:54:00:12:34:56"), NIC(bridge="br0", mac="02:00:00:00:00:01")),
    }
    values.update(changes)
    return DomainSpec(**values)  # type: ignore[arg-type]


def test_domain_xml_matches_the_golden_file():
    assert sample().to_xml() + "\n" == (DATA / "domain-web-1.xml").read_text()


def test_direct_kernel_boot_and_serial_log():
    spec = sample(disk=None, kernel=Path("/k/vmlinuz"), initrd=Path("/k/initrd"), cmdline="console=ttyS0",
                  serial_log=Path("/tmp/web-1.log"))  # fmt: skip
    xml = spec.to_xml()
    assert "<kernel>/k/vmlinuz</kernel>" in xml
    assert "<boot" not in xml
    assert DomainSpec.from_xml(xml) == spec


def test_a_serial_log_keeps_the_console_a_pty():
    """libvirt opens a console only on a pty: the log is the pty's <log>, not a file serial."""
    spec = sample(disk=None, serial_log=Path("/tmp/web-1.log"))
    devices = ET.fromstring(spec.to_xml()).find("devices")
    assert devices is not None
    serial = devices.find("serial")
    assert serial is not None
    assert serial.get("type") == "pty"
    log = serial.find("log")
    assert log is not None
    assert log.get("file") == "/tmp/web-1.log"
    assert log.get("append") == "on"
    console = devices.find("console")
    assert console is not None
    assert console.get("type") == "pty"


def test_round_trip_keeps_every_field():
    spec = sample(owner='<b>&"quoted"', image="/images/a&b.qcow2")
    xml = spec.to_xml()
    assert "<b>" not in xml  # escaped, not markup
    assert DomainSpec.from_xml(xml) == spec


@pytest.mark.parametrize(
    "name", ["", "a b", "x<y", "x&y", "../etc", "-lead", "a" * 64, "quote'", 'dq"', "new\nline"]
)
def test_names_that_could_inject_or_escape_are_refused(name):
    assert not valid_name(name)
    with pytest.raises(DomainXMLError, match="invalid domain name"):
        sample(name=name)


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"vcpus": 0}, "at least one vCPU"),
        ({"cpuset": frozenset()}, "cpuset"),
        ({"domain_type": "xen"}, "type"),
    ],
)
def test_bad_specs_are_refused(changes, problem):
    with pytest.raises(DomainXMLError, match=problem):
        sample(**changes)


def test_nics_and_the_guest_agent_channel_are_written_and_read_back():
    import xml.etree.ElementTree as ET

    domain = ET.fromstring(sample().to_xml())
    interfaces = domain.findall("devices/interface")
    assert [i.get("type") for i in interfaces] == ["network", "bridge"]
    assert interfaces[0].find("source").attrib == {"network": "default"}  # type: ignore[union-attr]
    assert interfaces[1].find("source").attrib == {"bridge": "br0"}  # type: ignore[union-attr]
    assert interfaces[1].find("mac").get("address") == "02:00:00:00:00:01"  # type: ignore[union-attr]
    assert {i.find("model").get("type") for i in interfaces} == {"virtio"}  # type: ignore[union-attr]
    channel = domain.find("devices/channel[@type='unix']/target")
    assert channel is not None
    assert channel.attrib == {"type": "virtio", "name": GUEST_AGENT_CHANNEL}
    assert DomainSpec.from_xml(sample(nics=()).to_xml()).nics == ()


def test_interfaces_pinfold_does_not_make_are_left_out_and_macs_read_lower_case():
    import xml.etree.ElementTree as ET

    domain = ET.fromstring(sample(nics=()).to_xml())
    devices = domain.find("devices")
    assert devices is not None
    user = ET.SubElement(devices, "interface", type="user")
    ET.SubElement(user, "mac", address="52:54:00:00:00:09")
    ours = ET.SubElement(devices, "interface", type="network")
    ET.SubElement(ours, "mac", address="52:54:00:AB:CD:EF")
    ET.SubElement(ours, "source", network="net-1")
    read = DomainSpec.from_xml(ET.tostring(domain, encoding="unicode"))
    assert read.nics == (NIC(network="net-1", mac="52:54:00:ab:cd:ef"),)


@pytest.mark.parametrize(
    ("nic", "problem"),
    [
        (NIC(network="default"), "needs its MAC"),
        (NIC(network="default", bridge="br0", mac="52:54:00:00:00:01"), "exactly one"),
        (NIC(mac="52:54:00:00:00:01"), "exactly one"),
        (NIC(network="default", mac="52:54:00:00:00"), "six hexadecimal octets"),
        (NIC(network="default", mac="52-54-00-00-00-01"), "six hexadecimal octets"),
        (NIC(network="default", mac="01:00:5e:00:00:01"), "multicast"),
        (NIC(bridge="a-bridge-name-too-long", mac="52:54:00:00:00:01"), "interface name"),
        (NIC(bridge="br/0", mac="52:54:00:00:00:01"), "interface name"),
    ],
)
def test_bad_nics_are_refused(nic, problem):
    with pytest.raises(DomainXMLError, match=problem):
        sample(nics=(nic,))


def test_a_domain_without_pinfold_metadata_is_not_ours():
    with pytest.raises(DomainXMLError, match="no pinfold metadata"):
        DomainSpec.from_xml("<domain type='kvm'><name>x</name><memory>1024</memory><vcpu>1</vcpu></domain>")
    with pytest.raises(DomainXMLError, match="not XML"):
        DomainSpec.from_xml("<domain")


def test_libvirt_accepts_the_xml_and_gives_the_same_spec_back():
    conn = libvirt_or_skip("test:///default")
    spec = sample(name="golden-check")
    domain = conn.defineXML(spec.to_xml())  # type: ignore[attr-defined]
    try:
        assert DomainSpec.from_xml(domain.XMLDesc()) == spec
    finally:
        domain.undefine()


def test_relabel_changes_only_the_owner_and_refuses_foreign_domains():
    from pinfold.agent.domain import metadata_fragment, relabeled_xml

    spec = DomainSpec(
        "a", 2, 256, frozenset({1, 2}), 2.0, owner="pool", domain_type="qemu", image="/img/base.qcow2"
    )
    again = DomainSpec.from_xml(relabeled_xml(spec.to_xml(), "alice <&>"))
    assert again == DomainSpec("a", 2, 256, frozenset({1, 2}), 2.0, owner="alice <&>", domain_type="qemu",
                               image="/img/base.qcow2")  # fmt: skip
    assert "alice &lt;&amp;&gt;" in metadata_fragment(relabeled_xml(spec.to_xml(), "alice <&>"))
    with pytest.raises(DomainXMLError):
        relabeled_xml("<domain type='kvm'><name>x</name></domain>", "bob")


def test_a_seed_is_a_read_only_ide_cdrom_read_back_apart_from_the_disk():
    seed = Path("/var/lib/pinfold/disks/web-1.cidata.iso")
    for disk in (Path("/var/lib/pinfold/disks/web-1.qcow2"), None):
        spec = sample(disk=disk, seed=seed)
        root = ET.fromstring(spec.to_xml())
        cdroms = root.findall("devices/disk[@device='cdrom']")
        assert len(cdroms) == 1
        cdrom = cdroms[0]
        assert cdrom.get("type") == "file"
        assert cdrom.find("driver").attrib == {"name": "qemu", "type": "raw"}  # type: ignore[union-attr]
        assert cdrom.find("source").get("file") == str(seed)  # type: ignore[union-attr]
        assert cdrom.find("target").attrib == {"dev": "hdc", "bus": "ide"}  # type: ignore[union-attr]
        assert cdrom.find("readonly") is not None
        assert DomainSpec.from_xml(spec.to_xml()) == spec  # a diskless VM's seed is no disk


def test_without_a_seed_the_domain_has_no_cdrom():
    assert "cdrom" not in sample().to_xml()


def test_libvirt_accepts_the_seed_cdrom_on_machine_pc():
    conn = libvirt_or_skip("test:///default")
    spec = sample(name="seed-check", disk=None, seed=Path("/var/lib/pinfold/disks/seed-check.cidata.iso"))
    domain = conn.defineXML(spec.to_xml())  # type: ignore[attr-defined]
    try:
        assert DomainSpec.from_xml(domain.XMLDesc()) == spec
    finally:
        domain.undefine()


def test_a_domain_from_before_consoles_gets_a_logged_pty_serial_and_nothing_else_changes():
    """pinfold once wrote the serial to a file (no console can attach to
    one): `consoled_xml` turns libvirt's own XML of such a domain into
    today's (the pty logging to the same file, a console on it), keeps every
    other device, and leaves a domain that has a pty as it is (None)."""
    from pinfold.agent.domain import consoled_xml, file_serial

    conn = libvirt_or_skip("test:///default")
    spec = sample(name="before-consoles", serial_log=Path("/var/lib/pinfold/consoles/b.log"))
    old = ET.fromstring(spec.to_xml())
    devices = old.find("devices")
    assert devices is not None
    for element in devices.findall("serial") + devices.findall("console"):
        devices.remove(element)
    serial = ET.SubElement(devices, "serial", type="file")
    ET.SubElement(serial, "source", path="/var/lib/pinfold/consoles/b.log")
    ET.SubElement(serial, "target", port="0")
    domain = conn.defineXML(ET.tostring(old, encoding="unicode"))  # type: ignore[attr-defined]
    try:
        theirs = domain.XMLDesc()
        assert file_serial(theirs)
        assert DomainSpec.from_xml(theirs) == spec  # read back the same, the log included
        made = consoled_xml(theirs)
        assert made is not None
        domain = conn.defineXML(made)  # type: ignore[attr-defined]
        now = ET.fromstring(domain.XMLDesc())
        assert [s.get("type") for s in now.iterfind("devices/serial")] == ["pty"]
        assert [c.get("type") for c in now.iterfind("devices/console")] == ["pty"]
        assert now.find("devices/serial/log").get("file") == "/var/lib/pinfold/consoles/b.log"  # type: ignore[union-attr]
        assert DomainSpec.from_xml(domain.XMLDesc()) == spec
        assert not file_serial(domain.XMLDesc())
        assert consoled_xml(domain.XMLDesc()) is None
        assert consoled_xml(spec.to_xml()) is None
    finally:
        domain.undefine()
