"""Disks with the real qemu-img: overlays on allowed base images only."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pinfold.agent.disks import DiskError, Disks
from pinfold.agent.drivers import SimDriver
from pinfold.agent.pools import PoolSpec
from pinfold.agent.service import Agent, AgentError, AgentSettings, VMRequest
from pinfold.agent.store import Store
from tests.agent.conftest import qemu_img_or_skip


@pytest.fixture
def images(tmp_path: Path) -> Path:
    qemu_img_or_skip()
    directory = tmp_path / "images"
    directory.mkdir()
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(directory / "base.qcow2"), "64M"], check=True
    )
    return directory


def backing_file(overlay: Path) -> str:
    info = subprocess.run(
        ["qemu-img", "info", "--output=json", str(overlay)], capture_output=True, check=True
    )
    return str(json.loads(info.stdout)["backing-filename"])


def test_overlay_is_backed_by_the_base_image(images, tmp_path):
    disks = Disks([images], tmp_path / "disks")
    base = disks.base_image(str(images / "base.qcow2"))
    overlay = disks.create_overlay("vm-1", base)
    assert overlay == tmp_path / "disks" / "vm-1.qcow2"
    assert backing_file(overlay) == str(base)
    disks.remove_overlay("vm-1")
    assert not overlay.exists()


def test_images_outside_the_image_directories_are_refused(images, tmp_path):
    outside = tmp_path / "elsewhere.qcow2"
    shutil.copy(images / "base.qcow2", outside)
    (images / "escape.qcow2").symlink_to(outside)
    disks = Disks([images], tmp_path / "disks")
    for image, problem in [
        (str(outside), "not inside"),
        (str(images / "escape.qcow2"), "not inside"),  # a link out is followed, then refused
        (str(images / ".." / "elsewhere.qcow2"), "not inside"),
        (str(images / "missing.qcow2"), "does not exist"),
        ("", "required"),
    ]:
        with pytest.raises(DiskError, match=problem):
            disks.base_image(image)


def test_the_agent_gives_each_vm_an_overlay_and_removes_it_with_the_vm(images, tmp_path, i7):
    driver = SimDriver()
    settings = AgentSettings(domain_type="qemu", image_dirs=(images,), disk_dir=tmp_path / "disks")
    agent = Agent.open(i7, driver, Store(tmp_path / "agent.db"), settings)
    agent.create(VMRequest("web", 1, 256, 1.0, image=str(images / "base.qcow2")))
    overlay = tmp_path / "disks" / "web.qcow2"
    spec = driver.info("web").spec
    assert spec is not None
    assert spec.disk == overlay
    assert backing_file(overlay) == str(images / "base.qcow2")
    with pytest.raises(AgentError, match="not inside"):
        agent.create(VMRequest("bad", 1, 256, 1.0, image="/etc/passwd"))
    assert set(agent.vms) == {"web"}
    agent.delete("web")
    assert not overlay.exists()


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_the_overlay_names_the_format_of_its_base(images, tmp_path, fmt):
    """A raw base image works too: the overlay's -F is what qemu-img finds,
    not an assumed qcow2."""
    base = images / f"base.{fmt}"
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(base), "64M"], check=True)
    disks = Disks([images], tmp_path / "disks")
    assert disks.image_format(base) == fmt
    overlay = disks.create_overlay("vm-1", disks.base_image(str(base)))
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(overlay)], capture_output=True, check=True
        ).stdout
    )
    assert (info["format"], info["backing-filename"], info["backing-filename-format"]) == (
        "qcow2",
        str(base),
        fmt,
    )


def qemu_img(*arguments: str) -> None:
    subprocess.run(["qemu-img", *arguments], check=True, capture_output=True)


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        pytest.param(
            lambda images, outside: qemu_img(
                "create", "-q", "-f", "qcow2", "-b", str(outside / "secret.qcow2"), "-F", "qcow2",
                str(images / "bad.qcow2"),
            ),
            "has a backing file",
            id="qcow2-backed-by-a-file-outside",
        ),
        pytest.param(
            lambda images, outside: qemu_img(
                "create", "-q", "-f", "qcow2", "-b", str(images / "base.qcow2"), "-F", "qcow2",
                str(images / "bad.qcow2"),
            ),
            "has a backing file",
            id="qcow2-backed-by-a-file-inside",
        ),
        pytest.param(
            lambda images, outside: qemu_img(
                "create", "-q", "-f", "qcow2", "-o", f"data_file={outside / 'data.raw'}",
                str(images / "bad.qcow2"), "16M",
            ),
            "external data file",
            id="qcow2-with-a-data-file-outside",
        ),
        pytest.param(
            lambda images, outside: qemu_img("create", "-q", "-f", "vmdk", str(images / "bad.qcow2"), "16M"),
            "is vmdk: base images must be raw or qcow2",
            id="vmdk",
        ),
    ],
)  # fmt: skip
def test_a_base_image_that_does_not_stand_alone_or_is_not_raw_or_qcow2_is_refused(
    images, tmp_path, i7, make, problem
):
    """libvirt would give the guest the backing file or data file too, and a
    vmdk names host files of its own: only a raw or qcow2 image alone is a base."""
    outside = tmp_path / "outside"
    outside.mkdir()
    qemu_img("create", "-q", "-f", "qcow2", str(outside / "secret.qcow2"), "16M")
    make(images, outside)
    disks = Disks([images], tmp_path / "disks")
    with pytest.raises(DiskError, match=problem) as error:
        disks.create_overlay("vm-1", disks.base_image(str(images / "bad.qcow2")))
    assert error.value.code == "invalid request"
    settings = AgentSettings(domain_type="qemu", image_dirs=(images,), disk_dir=tmp_path / "disks")
    agent = Agent.open(i7, SimDriver(), Store(tmp_path / "agent.db"), settings)
    with pytest.raises(AgentError, match=problem) as refused:
        agent.create(VMRequest("web", 1, 256, 1.0, image=str(images / "bad.qcow2")))
    assert refused.value.code == "invalid request"
    assert (agent.vms, list((tmp_path / "disks").glob("*"))) == ({}, [])


def test_a_base_qemu_img_cannot_read_or_no_qemu_img_is_a_disk_failure(images, tmp_path):
    (images / "not-an-image").mkdir()
    for qemu_img, base in [
        ("qemu-img", images / "not-an-image"),
        (str(tmp_path / "none"), images / "base.qcow2"),
    ]:
        disks = Disks([images], tmp_path / "disks", qemu_img=qemu_img)
        with pytest.raises(DiskError, match="disk failed"):
            disks.create_overlay("vm-1", base)
        assert not (tmp_path / "disks" / "vm-1.qcow2").exists()


def slow_qemu_img(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A qemu-img that waits at `create` until `go` exists (it says so in
    `started`), then runs the real one: a base image on slow storage."""
    started, go, script = tmp_path / "started", tmp_path / "go", tmp_path / "slow-qemu-img"
    script.write_text(
        f'#!/bin/sh\nif [ "$1" = create ]; then\n  touch "{started}"\n'
        f'  while [ ! -e "{go}" ]; do sleep 0.02; done\nfi\nexec qemu-img "$@"\n'
    )
    script.chmod(0o755)
    return script, started, go


def test_overlays_are_made_without_holding_the_agent(images, tmp_path, i7):
    settings = AgentSettings(domain_type="qemu", image_dirs=(images,), disk_dir=tmp_path / "disks")
    agent = Agent.open(i7, SimDriver(), Store(tmp_path / "agent.db"), settings)
    script, started, go = slow_qemu_img(tmp_path)
    agent.disks.qemu_img = str(script)
    with ThreadPoolExecutor(1) as pool:
        created = pool.submit(agent.create, VMRequest("web", 1, 256, 1.0, image=str(images / "base.qcow2")))
        try:
            deadline = time.monotonic() + 10
            while not started.exists():
                assert not created.done(), created.exception()  # done: it failed before qemu-img
                assert time.monotonic() < deadline, "qemu-img did not start"
                time.sleep(0.02)
            assert agent.lock.acquire(timeout=2), "the agent's lock is held while qemu-img runs"
            agent.lock.release()
            assert "web" not in agent.vms  # nothing half-made to be seen meanwhile
        finally:
            go.touch()
        assert created.result().state == "running"
    assert sorted(p.name for p in (tmp_path / "disks").iterdir()) == ["web.qcow2"]
    assert backing_file(tmp_path / "disks" / "web.qcow2") == str(images / "base.qcow2")


def test_an_overlay_made_for_a_refused_create_or_cut_short_by_a_crash_is_removed(images, tmp_path, i7):
    settings = AgentSettings(domain_type="qemu", image_dirs=(images,), disk_dir=tmp_path / "disks")
    agent = Agent.open(i7, SimDriver(), Store(tmp_path / "agent.db"), settings)
    with pytest.raises(AgentError, match="not enough cpu"):
        agent.create(VMRequest("big", 64, 256, 1.0, image=str(images / "base.qcow2")))
    assert list((tmp_path / "disks").glob("*")) == []
    agent.disks.prepare_overlay(images / "base.qcow2")  # then kill -9
    agent.close()
    Agent.open(i7, SimDriver(), Store(tmp_path / "agent.db"), settings)
    assert list((tmp_path / "disks").iterdir()) == []


def counting_qemu_img(tmp_path: Path) -> tuple[Path, Path]:
    """A qemu-img that writes each subcommand it runs (info, create) to a log."""
    log, script = tmp_path / "qemu-img.log", tmp_path / "counting-qemu-img"
    script.write_text(f'#!/bin/sh\necho "$1" >> "{log}"\nexec qemu-img "$@"\n')
    script.chmod(0o755)
    return script, log


def qemu_img_calls(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def test_a_refused_create_or_pool_refill_runs_no_qemu_img(images, tmp_path, i7):
    """A create the host would refuse is refused before an overlay is made:
    an API create pays no qemu-img for it, and a pool larger than the host
    does not make and delete an overlay every period."""
    image = str(images / "base.qcow2")
    huge = PoolSpec(name="huge", size=50, vcpus=2, memory_mib=256, ratio=1.0, image=image, warmup_s=0)
    settings = AgentSettings(
        domain_type="qemu", image_dirs=(images,), disk_dir=tmp_path / "disks", pools=(huge,)
    )
    agent = Agent.open(i7, SimDriver(), Store(tmp_path / "agent.db"), settings)
    script, log = counting_qemu_img(tmp_path)
    agent.disks.qemu_img = str(script)
    agent.create(VMRequest("web", 4, 256, 1.0, image=image))
    assert qemu_img_calls(log) == ["info", "create"]
    for request, code in [
        (VMRequest("big", 64, 256, 1.0, image=image), "not enough cpu"),
        (VMRequest("fat", 1, 10**7, 1.0, image=image), "not enough memory"),
        (VMRequest("web", 1, 256, 1.0, image=image), "duplicate name"),
    ]:
        with pytest.raises(AgentError) as error:
            agent.create(request)
        assert error.value.code == code
    assert qemu_img_calls(log) == ["info", "create"]
    assert agent.tend_pools(0.0) is True
    assert agent.tend_pools(0.0) is True  # the second member that fits
    made = len(qemu_img_calls(log))
    assert made == 2 + 2 * 2  # the two members that fit
    for _ in range(5):  # PoolKeeper periods
        with pytest.raises(AgentError, match="not enough cpu"):
            agent.tend_pools(0.0)
    assert len(qemu_img_calls(log)) == made
    assert str(agent.pool_status()["huge"]["last_error"]).startswith("not enough cpu: ")
    assert sorted(p.name for p in (tmp_path / "disks").iterdir()) == [
        "pool-huge-0.qcow2", "pool-huge-1.qcow2", "web.qcow2",
    ]  # fmt: skip
