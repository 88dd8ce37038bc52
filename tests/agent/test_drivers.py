"""The same behaviour from every driver: `sim`, and `libvirt` on libvirt's own
test hypervisor (test:///default, a real libvirt without QEMU)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator

import pytest

from pinfold.agent.domain import DomainSpec
from pinfold.agent.drivers import Driver, DriverError, GuestState, SimDriver
from pinfold.agent.drivers.sim import COUNTER_BLOCK
from tests.agent.conftest import libvirt_or_skip


def spec(name: str = "vm-a", cpuset: frozenset[int] = frozenset({0, 1})) -> DomainSpec:
    return DomainSpec(name, 2, 256, cpuset, 2.0, owner="alice", domain_type="qemu")


@pytest.fixture(params=["sim", "libvirt-test"])
def driver(request: pytest.FixtureRequest) -> Iterator[Driver]:
    if request.param == "sim":
        yield SimDriver()
        return
    libvirt_or_skip("test:///default")
    from pinfold.agent.drivers.libvirt import LibvirtDriver

    real = LibvirtDriver("test:///default", poll_s=0.01)
    yield real
    for guest in real.guests():
        if guest.spec is not None:
            real.delete(guest.name)
    real.close()


def test_create_runs_the_guest_with_its_spec(driver):
    driver.create(spec())
    info = driver.info("vm-a")
    assert info.state is GuestState.RUNNING
    assert info.spec == spec()


def test_lifecycle_moves_between_states(driver):
    driver.create(spec())
    driver.suspend("vm-a")
    assert driver.info("vm-a").state is GuestState.PAUSED
    driver.resume("vm-a")
    assert driver.info("vm-a").state is GuestState.RUNNING
    driver.shutdown("vm-a", timeout_s=0.5)
    assert driver.info("vm-a").state is GuestState.SHUTOFF
    driver.start("vm-a")
    assert driver.info("vm-a").state is GuestState.RUNNING
    driver.delete("vm-a")
    assert "vm-a" not in {g.name for g in driver.guests()}


def test_repin_changes_the_pinning_of_the_guest(driver):
    driver.create(spec(cpuset=frozenset({0})))
    driver.repin("vm-a", frozenset({0, 1}))
    info = driver.info("vm-a")
    assert info.spec is not None
    assert info.spec.cpuset == frozenset({0, 1})


@pytest.mark.parametrize(
    ("action", "code"),
    [
        (lambda d: d.info("ghost"), "not found"),
        (lambda d: d.delete("ghost"), "not found"),
        (lambda d: d.suspend("ghost"), "not found"),
        (lambda d: d.create(spec()), "already exists"),
        (lambda d: d.resume("vm-a"), "invalid"),
        (lambda d: d.start("vm-a"), "invalid"),
        (lambda d: d.repin("vm-a", frozenset()), "invalid"),
    ],
    ids=["info", "delete", "suspend", "create-twice", "resume-running", "start-running", "repin-empty"],
)
def test_errors_have_stable_codes(driver, action, code):
    driver.create(spec())
    with pytest.raises(DriverError) as error:
        action(driver)
    assert error.value.code == code
    assert driver.info("vm-a").state is GuestState.RUNNING  # nothing changed


def test_domains_without_pinfold_metadata_are_listed_but_not_ours():
    libvirt_or_skip("test:///default")
    from pinfold.agent.drivers.libvirt import LibvirtDriver

    real = LibvirtDriver("test:///default")
    foreign = {g.name: g for g in real.guests()}
    assert foreign["test"].spec is None  # the test hypervisor's own sample domain
    real.close()


def test_a_domain_deleted_while_the_list_is_read_is_left_out(monkeypatch):
    libvirt_or_skip("test:///default")
    from pinfold.agent.drivers.libvirt import LibvirtDriver

    real = LibvirtDriver("test:///default", poll_s=0.01)
    try:
        real.create(spec("vm-gone"))
        listed = real._conn.listAllDomains()  # the listing, before another client deletes vm-gone
        real.delete("vm-gone")
        monkeypatch.setattr(real._conn, "listAllDomains", lambda *flags: listed)
        assert "vm-gone" not in {guest.name for guest in real.guests()}
        assert "test" in {guest.name for guest in real.guests()}  # the others are still read
    finally:
        real.close()


def test_sim_guests_get_predictable_addresses_while_running():
    driver = SimDriver()
    for name in ("a", "b"):
        driver.create(DomainSpec(name, 1, 128, frozenset({0}), 1.0, domain_type="qemu"))
    assert (driver.addresses("a"), driver.addresses("b")) == (["198.51.100.1"], ["198.51.100.2"])
    driver.suspend("a")
    assert driver.addresses("a") == []


def test_sim_addresses_do_not_start_again_after_a_restart_on_the_same_data_dir(tmp_path):
    """A RAPID DS (or anyone) still holds the addresses handed out before:
    an agent restarted on its data dir must not give them to new VMs."""
    from pinfold.agent.config import AgentConfig
    from pinfold.agent.daemon import choose_driver

    config = AgentConfig(driver="sim", data_dir=tmp_path / "data")
    before: set[str] = set()
    for run in range(3):
        driver, _ = choose_driver(config)  # each run: a new process's driver, nothing in memory
        for n in range(2):
            name = f"vm-{run}-{n}"
            driver.create(DomainSpec(name, 1, 128, frozenset({0}), 1.0, domain_type="qemu"))
            (address,) = driver.addresses(name)
            assert address not in before
            assert address.startswith(("198.51.100.", "203.0.113.", "192.0.2."))  # documentation ranges
            before.add(address)


def test_a_sim_address_count_damaged_by_hand_starts_again_from_the_first(tmp_path, caplog):
    counter = tmp_path / "sim-addresses"
    counter.write_text("not a number\n")
    driver = SimDriver(counter)
    driver.create(DomainSpec("a", 1, 128, frozenset({0}), 1.0, domain_type="qemu"))
    assert driver.addresses("a") == ["198.51.100.1"]
    assert "holds no count" in caplog.text
    assert counter.read_text() == str(COUNTER_BLOCK)  # the first block reserved


def test_the_sim_address_count_is_written_once_a_block_and_a_restart_goes_past_it(tmp_path):
    """The file is not written at each create (it was a third of a sim
    create's CPU): once a block of addresses, before the block's first is
    handed out; a driver made again starts after the whole block."""
    counter = tmp_path / "sim-addresses"
    driver = SimDriver(counter)
    writes = []
    keep = driver._save_counter

    def counting(reserved: int) -> None:
        writes.append(reserved)
        keep(reserved)

    driver._save_counter = counting  # type: ignore[method-assign]
    for n in range(COUNTER_BLOCK + 1):
        driver.create(DomainSpec(f"vm{n}", 1, 128, frozenset({0}), 1.0, domain_type="qemu"))
    assert writes == [COUNTER_BLOCK, 2 * COUNTER_BLOCK]
    assert driver.addresses(f"vm{COUNTER_BLOCK}") == [f"198.51.100.{COUNTER_BLOCK + 1}"]
    again = SimDriver(counter)
    again.create(DomainSpec("after", 1, 128, frozenset({0}), 1.0, domain_type="qemu"))
    assert again.addresses("after") == [f"198.51.100.{2 * COUNTER_BLOCK + 1}"]


def test_the_sim_driver_can_be_read_while_other_threads_change_it():
    """The monitor reads stats, and a graceful shutdown waits, outside the
    agent's lock while API threads create and delete guests."""
    driver = SimDriver()
    stop = threading.Event()

    def churn() -> None:
        index = 0
        while not stop.is_set():
            name = f"vm-{index % 64}"
            if index % 128 < 64:
                driver.create(DomainSpec(name, 1, 128, frozenset({0}), 1.0, domain_type="qemu"))
            else:
                driver.delete(name)
            index += 1

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: mid-iteration too
    thread = threading.Thread(target=churn)
    thread.start()
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            assert all(memory == 128.0 for _, memory in driver.stats().values())
            assert len(driver.guests()) <= 64
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(interval)


def test_a_failed_write_of_the_sim_address_count_is_tried_again_at_the_next_create(tmp_path):
    """The block counts as reserved only once the file says so: a write that
    failed (a full disk) is made again by the next create, so no address
    handed out is missing from the file at a restart."""
    counter = tmp_path / "sim-addresses"
    driver = SimDriver(counter)
    keep = driver._save_counter
    failures = [OSError(28, "No space left on device")]

    def failing_once(reserved: int) -> None:
        if failures:
            raise failures.pop()
        keep(reserved)

    driver._save_counter = failing_once  # type: ignore[method-assign]
    with pytest.raises(OSError, match="No space"):
        driver.create(DomainSpec("a", 1, 128, frozenset({0}), 1.0, domain_type="qemu"))
    assert driver.guests() == []  # the failed create left no guest
    driver.create(DomainSpec("b", 1, 128, frozenset({0}), 1.0, domain_type="qemu"))
    assert counter.read_text() == str(COUNTER_BLOCK)  # written now, past b's address
    again = SimDriver(counter)
    again.create(DomainSpec("c", 1, 128, frozenset({0}), 1.0, domain_type="qemu"))
    assert again.addresses("c") != driver.addresses("b")
