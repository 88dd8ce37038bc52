"""The dashboard in a real browser: Debian's Chromium, headless, driven by
Playwright, against a controller and `sim` agents on loopback. Log in, see
the hosts, create VMs (the form keeping what was typed across refreshes) and
watch one appear on the host's CPU map and its vNode plot, filter them, act on
them (a confirmation for the destructive actions only), delete one; and a
host with many L3 caches shown as its groups. A screenshot of each page is saved under test-output/dashboard
(looked at while writing this, and copied to docs/screenshots for the README)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from pinfold.controller.models import VM
from tests.controller.cluster import ADMIN, LocalCluster

CHROMIUM = "/usr/bin/chromium"
OUTPUT = Path(__file__).resolve().parents[2] / "test-output" / "dashboard"
# as root, and without the machine's closed network being tried for Google's services
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"]
FLAGS += ["--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        if os.environ.get("PINFOLD_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is missing: scripts/test installs it as root")
        pytest.skip("no chromium here")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield launched
        launched.close()


@pytest.fixture
def cluster(tmp_path, i7) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path, f"sqlite:///{tmp_path / 'controller.db'}", i7)
    local.add_host("edge-1")
    local.add_host("edge-2")
    yield local
    local.close()


def shot(page, name: str) -> Path:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    path = OUTPUT / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def log_in(page, cluster: LocalCluster) -> None:
    page.goto(cluster.url + "/")
    page.get_by_test_id("token").fill(ADMIN)
    page.get_by_test_id("login-button").click()
    page.wait_for_selector("[data-testid=host-row]")


def rerendered(page, selector: str) -> None:
    """Wait for the next refresh to replace the element at `selector`."""
    page.eval_on_selector(selector, "element => { element.dataset.old = 'yes'; }")
    page.wait_for_selector(f"{selector}:not([data-old])", timeout=10000)


def rows(page) -> list[str]:
    return sorted(row.get_attribute("data-vm") for row in page.locator("[data-testid=vms] tr[data-vm]").all())


def vm_rows_are(page, count: int) -> None:
    """Wait for the VM table to show `count` rows (a locator, not a JavaScript
    predicate: the page's Content-Security-Policy refuses the eval Playwright
    runs those with)."""
    from playwright.sync_api import expect

    expect(page.locator("[data-testid=vms] tr[data-vm]")).to_have_count(count)


def state_of(page, name: str, state: str) -> None:
    page.wait_for_selector(f"tr[data-vm={name}] [data-testid=state]:text-is('{state}')")


def test_log_in_create_watch_filter_act_and_delete(browser, cluster):
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    dialogs: list[str] = []
    accept = {"next": True}

    def on_dialog(dialog) -> None:  # the confirmation of destructive actions
        dialogs.append(dialog.message)
        dialog.accept() if accept["next"] else dialog.dismiss()

    page.on("dialog", on_dialog)
    # the pages' Content-Security-Policy blocks nothing they need (Chromium says so on the console)
    refused: list[str] = []
    page.on(
        "console",
        lambda message: refused.append(message.text) if "Content Security" in message.text else None,
    )
    page.goto(cluster.url + "/")
    page.get_by_test_id("token").fill("wrong-token-0123456789")
    page.get_by_test_id("login-button").click()
    page.wait_for_selector("text=Your token was refused")
    page.get_by_test_id("token").fill(ADMIN)
    page.get_by_test_id("login-button").click()
    page.wait_for_selector("[data-testid=host-row]")
    assert page.locator("[data-testid=host-row]").count() == 2
    shot(page, "overview")

    # what is typed in the create form survives the refreshes once focus leaves it
    page.get_by_test_id("nav-vms").click()
    form = page.get_by_test_id("create")
    form.locator("input[name=name]").fill("web")
    form.locator("input[name=vcpus]").fill("2")
    form.locator("select[name=ratio]").select_option("2")
    page.locator("main h2").click()
    rerendered(page, "[data-testid=create]")
    assert form.locator("input[name=name]").input_value() == "web"
    assert form.locator("input[name=vcpus]").input_value() == "2"
    assert form.locator("select[name=ratio]").input_value() == "2"
    form.locator("button[type=submit]").click()
    page.wait_for_selector("tr[data-vm=web]")
    assert form.locator("input[name=name]").input_value() == ""  # emptied once created
    form.locator("input[name=name]").fill("db")
    form.locator("button[type=submit]").click()
    page.wait_for_selector("tr[data-vm=db]")
    host = cluster.controller.vm("web").host_id
    assert host is not None
    vnode = sorted(cluster.hosts[host].agent.allocator.vnode(2.0))  # (pinned wider while levels share)

    page.goto(f"{cluster.url}/#/hosts/{host}")
    cells = "[data-testid=cpu-map] .cell[data-level='2.0']"
    page.wait_for_selector(cells, timeout=15000)  # the next heartbeat carries the vNode
    assert sorted(int(c.get_attribute("data-cpu")) for c in page.locator(cells).all()) == vnode
    # the vNode plot: size and use of the 2:1 vNode drawn over the last hour, with time labels
    page.wait_for_selector("[data-testid=history] polyline[data-level='2.0']", timeout=15000)
    assert page.locator("[data-testid=history] polyline[data-level='2.0']").count() == 2
    assert page.locator("[data-testid=history] text.tick").count() == 5
    # the CPU map's bars have their heights (set from script, which the policy allows)
    heights = [
        cell.evaluate("e => e.style.height") for cell in page.locator("[data-testid=cpu-map] .use").all()
    ]
    assert heights
    assert all(height.endswith("%") for height in heights)
    assert refused == []
    shot(page, "host")

    page.get_by_test_id("nav-vms").click()
    page.locator("tr[data-vm=web] button[data-action=suspend]").click()
    state_of(page, "web", "paused")
    assert cluster.hosts[host].agent.vms["web"].state == "paused"
    assert dialogs == []  # suspending is not destructive: no confirmation

    page.locator("select[data-filter=state]").select_option("paused")
    vm_rows_are(page, 1)
    assert rows(page) == ["web"]
    page.locator("select[data-filter=state]").select_option("")
    page.locator("select[data-filter=level]").select_option("1:1")
    vm_rows_are(page, 1)
    assert rows(page) == ["db"]
    page.locator("select[data-filter=level]").select_option("")
    vm_rows_are(page, 2)
    shot(page, "vms")

    page.locator("tr[data-vm=web] button[data-action=resume]").click()
    state_of(page, "web", "running")
    assert dialogs == []
    page.locator("tr[data-vm=web] button[data-action=shutdown]").click()
    state_of(page, "web", "shutoff")
    assert dialogs == ["Shut web down?"]
    assert cluster.hosts[host].agent.vms["web"].state == "shutoff"
    # its buttons are the lifecycle table's for its state: a shut-off VM is started or deleted
    assert page.locator("tr[data-vm=web] button").all_text_contents() == ["start", "delete"]

    accept["next"] = False  # "cancel": nothing happens
    page.locator("tr[data-vm=web] button[data-action=delete]").click()
    rerendered(page, "[data-testid=vms]")
    assert "web" in cluster.hosts[host].agent.allocator
    accept["next"] = True
    page.locator("tr[data-vm=web] button[data-action=delete]").click()
    page.wait_for_selector("tr[data-vm=web]", state="detached")
    assert "web" not in cluster.hosts[host].agent.allocator
    assert dialogs == ["Shut web down?"] + ["Delete web? Its disk goes with it."] * 2


def test_the_host_filter_finds_vms_without_a_host(browser, cluster):
    """A VM the directory holds with no host (its filter value is "-")."""
    created = cluster.http.post("/api/v1/vms", json={"name": "placed", "vcpus": 1, "memory_mib": 256})
    assert created.status_code == 201
    with Session(cluster.controller.store.engine) as session, session.begin():
        orphan = {"name": "orphan", "seq": 10**6, "host_id": None, "vcpus": 1, "memory_mib": 256}
        times = {"created_at": 1.0, "updated_at": 1.0}
        session.add(VM(**orphan, **times, ratio=1.0, owner="", image="", state="failed", detail=""))
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    log_in(page, cluster)
    page.get_by_test_id("nav-vms").click()
    page.wait_for_selector("tr[data-vm=orphan]")
    page.locator("select[data-filter=host]").select_option("-")
    vm_rows_are(page, 1)
    assert rows(page) == ["orphan"]
    page.locator("select[data-filter=host]").select_option(created.json()["host"])
    page.wait_for_selector("tr[data-vm=placed]")
    assert rows(page) == ["placed"]


def test_a_host_with_many_l3_caches_shows_each_as_a_group(browser, cluster, epyc):
    """An EPYC 7662: 2 sockets, 32 L3 domains of 8 logical CPUs (4 cores and their SMT siblings)."""
    cluster.add_host("epyc-1", topology=epyc)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    log_in(page, cluster)
    page.goto(f"{cluster.url}/#/hosts/epyc-1")
    page.wait_for_selector("[data-testid=cpu-map] .cell")
    assert page.locator("[data-testid=cpu-map] .socket").count() == 2
    groups = page.locator("[data-testid=cpu-map] .l3")
    assert groups.count() == 32
    assert {group.locator(".cell").count() for group in groups.all()} == {8}
    assert {group.locator(".core").count() for group in groups.all()} == {4}
    shot(page, "host-epyc")


def test_the_page_needs_no_internet(browser, cluster):
    """Every request the dashboard makes goes to the controller itself."""
    page = browser.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(cluster.url + "/")
    page.get_by_test_id("token").fill(ADMIN)
    page.get_by_test_id("login-button").click()
    page.wait_for_selector("[data-testid=host-row]")
    assert requested
    assert all(url.startswith(cluster.url) for url in requested), requested
    assert shutil.which("chromium") or Path(CHROMIUM).exists()


def test_the_overview_shows_migrations_in_flight_and_done(browser, cluster):
    """A migration in flight (reserved, its agents not asked) and one done."""
    for name in ("moved", "moving"):
        created = cluster.http.post("/api/v1/vms", json={"name": name, "vcpus": 1, "memory_mib": 256})
        assert created.status_code == 201, created.text
    host = cluster.http.get("/api/v1/vms/moved").json()["host"]
    other = "edge-2" if host == "edge-1" else "edge-1"
    moved = cluster.http.post("/api/v1/vms/moved/migrate", json={"to": other})
    assert moved.status_code == 200, moved.text
    controller = cluster.controller
    source = cluster.http.get("/api/v1/vms/moving").json()["host"]
    target = "edge-2" if source == "edge-1" else "edge-1"
    with controller._moving_lock:  # a controller at work on it: its heartbeats leave it in flight
        controller._moving.add("moving")
    controller.store.reserve_migration("moving", target, controller._fits.on_host, controller.clock())
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    log_in(page, cluster)
    page.wait_for_selector("[data-testid=migrations] tr[data-outcome='in flight']")
    flying = page.locator("[data-testid=migrations] tr[data-outcome='in flight'] td").all_inner_texts()
    assert flying[:3] == ["moving", source, target]
    done = page.locator("[data-testid=migrations] tr[data-outcome=done] td").all_inner_texts()
    assert done[:3] == ["moved", host, other]
    assert done[4] == "done"
    shot(page, "migrations")
