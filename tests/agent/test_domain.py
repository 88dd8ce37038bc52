"""Domain XML: a golden document, round trips (ours and libvirt's own XML),
and names or paths that must not become XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pinfold.agent.domain import DomainSpec, DomainXMLError, valid_name
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
