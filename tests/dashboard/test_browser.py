"""The dashboard in a real browser: Debian's Chromium, headless, driven by
Playwright, against a controller and two `sim` agents on loopback. Log in,
see the hosts, create a VM and watch it appear on the host's CPU map, suspend
it, delete it. A screenshot of each page is saved under test-output/dashboard
(looked at while writing this, and copied to docs/screenshots for the README)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

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


def test_log_in_create_watch_suspend_delete(browser, cluster):
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    page.on("dialog", lambda dialog: dialog.accept())  # the confirmation of destructive actions
    page.goto(cluster.url + "/")
    page.get_by_test_id("token").fill("wrong-token-0123456789")
    page.get_by_test_id("login-button").click()
    page.wait_for_selector("text=Your token was refused")
    page.get_by_test_id("token").fill(ADMIN)
    page.get_by_test_id("login-button").click()
    page.wait_for_selector("[data-testid=host-row]")
    assert page.locator("[data-testid=host-row]").count() == 2
    shot(page, "overview")

    page.get_by_test_id("nav-vms").click()
    form = page.get_by_test_id("create")
    form.locator("input[name=name]").fill("web")
    form.locator("input[name=vcpus]").fill("2")
    form.locator("select[name=ratio]").select_option("2")
    form.locator("button[type=submit]").click()
    page.wait_for_selector("tr[data-vm=web]")
    host = cluster.controller.vm("web").host_id
    assert host is not None
    vnode = sorted(cluster.hosts[host].agent.allocator.vnode(2.0))  # (pinned wider while levels share)

    page.goto(f"{cluster.url}/#/hosts/{host}")
    cells = "[data-testid=cpu-map] .cell[data-level='2.0']"
    page.wait_for_selector(cells, timeout=15000)  # the next heartbeat carries the vNode
    assert sorted(int(c.get_attribute("data-cpu")) for c in page.locator(cells).all()) == vnode
    shot(page, "host")

    page.get_by_test_id("nav-vms").click()
    page.locator("tr[data-vm=web] button[data-action=suspend]").click()
    page.wait_for_selector("tr[data-vm=web] [data-testid=state]:text('paused')")
    assert cluster.hosts[host].agent.vms["web"].state == "paused"
    shot(page, "vms")
    page.locator("tr[data-vm=web] button[data-action=delete]").click()
    page.wait_for_selector("tr[data-vm=web]", state="detached")
    assert "web" not in cluster.hosts[host].agent.allocator


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
