"""Bad input against the real libvirt (qemu:///system): names with XML's
special characters, disk images outside the image directories, huge and
negative sizes are refused before anything is made: no domain is defined, no
VM stored, no overlay written. No guest boots, so this is quick."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from pinfold.agent.api import create_app
from pinfold.agent.service import Agent, AgentError, AgentSettings, VMRequest
from pinfold.agent.store import Store
from pinfold.topology import Topology
from tests.agent.conftest import libvirt_or_skip, qemu_img_or_skip
from tests.servers import serving

PREFIX = "pinfold-refused"
TOKEN = "test-token-0123456789abcdef"


@pytest.fixture
def real(tmp_path: Path) -> Iterator[tuple[Agent, Path]]:
    """An agent on qemu:///system, and its image directory (a base image
    inside; outside it, a copy and a link pointing there)."""
    libvirt_or_skip("qemu:///system")
    qemu_img_or_skip()
    from pinfold.agent.drivers.libvirt import LibvirtDriver

    images = tmp_path / "images"
    images.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(images / "base.qcow2"), "16M"], check=True)
    shutil.copy(images / "base.qcow2", tmp_path / "outside.qcow2")
    (images / "escape.qcow2").symlink_to(tmp_path / "outside.qcow2")
    driver = LibvirtDriver("qemu:///system")
    settings = AgentSettings(domain_type="qemu", image_dirs=(images,), disk_dir=tmp_path / "disks")
    agent = Agent.open(Topology.discover(), driver, Store(tmp_path / "agent.db"), settings)
    try:
        yield agent, images
    finally:
        agent.close()
        driver.close()


def domains(agent: Agent) -> set[str]:
    return {guest.name for guest in agent.driver.guests()}


def assert_nothing_changed(agent: Agent, before: set[str]) -> None:
    assert domains(agent) == before
    assert not {name for name in domains(agent) if name.startswith(PREFIX)}
    assert agent.vms == {}
    assert agent.store.load()[1] == {}
    disks = agent.disks.disk_dir
    assert not disks.exists() or list(disks.iterdir()) == []
    assert agent.allocator.memory_allocated_mib == 0


def image(name: str) -> Callable[[Path], str]:
    return lambda images: str(images / name)


CASES: list[tuple[str, int, int, Callable[[Path], str], str]] = [
    (PREFIX + "<x>", 1, 64, image("base.qcow2"), "invalid request"),
    (PREFIX + "&amp;", 1, 64, image("base.qcow2"), "invalid request"),
    (PREFIX + "'x", 1, 64, image("base.qcow2"), "invalid request"),
    (PREFIX + '"x', 1, 64, image("base.qcow2"), "invalid request"),
    (PREFIX + "]]>", 1, 64, lambda images: "", "invalid request"),
    (PREFIX + "-passwd", 1, 64, lambda images: "/etc/passwd", "invalid request"),
    (PREFIX + "-dotdot", 1, 64, image("../outside.qcow2"), "invalid request"),
    (PREFIX + "-link", 1, 64, image("escape.qcow2"), "invalid request"),
    (PREFIX + "-xmlpath", 1, 64, lambda images: f"{images.parent}/<d&'\">.qcow2", "invalid request"),
    (PREFIX + "-cpus", 10**6, 64, image("base.qcow2"), "not enough cpu"),
    (PREFIX + "-memory", 1, 2**40, image("base.qcow2"), "not enough memory"),
    (PREFIX + "-neg-cpus", -1, 64, image("base.qcow2"), "invalid request"),
    (PREFIX + "-neg-memory", 1, -64, image("base.qcow2"), "invalid request"),
]
IDS = ["lt-gt", "amp", "apos", "quot", "cdata-end", "etc-passwd", "dotdot", "link-out", "xml-path",
       "huge-cpus", "huge-memory", "negative-cpus", "negative-memory"]  # fmt: skip


@pytest.mark.parametrize(("name", "vcpus", "memory_mib", "image_of", "code"), CASES, ids=IDS)
def test_the_agent_refuses_bad_input_before_libvirt_sees_it(real, name, vcpus, memory_mib, image_of, code):
    agent, images = real
    before = domains(agent)
    with pytest.raises(AgentError) as error:
        agent.create(VMRequest(name, vcpus, memory_mib, 1.0, owner="tests", image=image_of(images)))
    assert error.value.code == code
    assert_nothing_changed(agent, before)


def test_the_api_refuses_bad_input_before_the_agent_sees_it(real):
    agent, images = real
    before = domains(agent)
    with serving(create_app(agent, TOKEN)) as url, httpx.Client(base_url=url, timeout=10) as http:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        for (name, vcpus, memory_mib, image_of, _), case in zip(CASES, IDS, strict=True):
            body = {"name": name, "vcpus": vcpus, "memory_mib": memory_mib, "image": image_of(images)}
            response = http.post("/api/v1/vms", json=body, headers=auth)
            assert response.status_code in (400, 409, 422), (case, response.text)
            assert response.json()["error"] in ("invalid request", "not enough cpu", "not enough memory")
        # SlackVM's route answers in SlackVM's vocabulary: 200, success false, nothing made
        slackvm = http.get(
            "/deploy",
            params={"name": PREFIX + "<x>", "cpu": 1, "mem": 1, "oc": 1, "qcow2": "", "token": TOKEN},
        )
        assert slackvm.status_code == 200
        assert slackvm.content == b'{"reason":"invalid request","success":false}\n'
    assert_nothing_changed(agent, before)
