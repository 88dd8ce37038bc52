"""A VM's console in the dashboard, in Debian's Chromium driven by Playwright,
against a controller and a `sim` agent on loopback: xterm.js loaded from the
package, the admin token passed as a WebSocket subprotocol, the simulated
console's echo shown in the terminal; a second page watches read-only; the
page's Content-Security-Policy is kept: it refuses xterm.js's own <style>
elements, whose text the page copies into constructed style sheets, and nothing else."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from pinfold.agent.drivers import SimDriver
from pinfold.agent.service import AgentSettings
from tests.controller.cluster import ADMIN, LocalCluster
from tests.dashboard.test_browser import browser, log_in, shot  # noqa: F401  (fixture)


@pytest.fixture
def cluster(tmp_path, i7) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path, f"sqlite:///{tmp_path / 'controller.db'}", i7)
    local.add_host("edge-1")
    created = local.http.post("/api/v1/vms", json={"name": "web", "vcpus": 1, "memory_mib": 256})
    assert created.status_code == 201, created.text
    yield local
    local.close()


def refused_by_csp(page) -> list[str]:
    refused: list[str] = []
    page.on("console", lambda m: refused.append(m.text) if "Content Security" in m.text else None)
    return refused


def test_the_console_page_types_into_the_vm_and_a_second_page_watches(browser, cluster):  # noqa: F811
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1000, "height": 700})
    refused = refused_by_csp(page)
    log_in(page, cluster)
    page.get_by_test_id("nav-vms").click()
    page.click("a[data-console=web]")
    status = page.get_by_test_id("console-status")
    expect(status).to_have_attribute("data-mode", "write", timeout=15000)
    rows = page.locator("[data-testid=terminal] .xterm-rows")
    expect(rows).to_contain_text("simulated console", timeout=10000)
    page.keyboard.type("hello from the browser")
    page.keyboard.press("Enter")
    expect(rows).to_contain_text("hello from the browser", timeout=10000)

    watcher = browser.new_page(viewport={"width": 1000, "height": 700})
    watcher_refused = refused_by_csp(watcher)
    log_in(watcher, cluster)
    watcher.goto(f"{cluster.url}/#/console/web")
    expect(watcher.get_by_test_id("console-status")).to_have_attribute("data-mode", "read", timeout=15000)
    page.keyboard.type("seen by both")
    page.keyboard.press("Enter")
    expect(watcher.locator("[data-testid=terminal] .xterm-rows")).to_contain_text(
        "seen by both", timeout=10000
    )
    shot(page, "console")

    shutdown = httpx.post(
        f"{cluster.url}/api/v1/vms/web/shutdown", headers={"Authorization": f"Bearer {ADMIN}"}
    )
    assert shutdown.status_code == 200
    expect(status).to_have_attribute("data-mode", "closed", timeout=15000)
    expect(status).to_contain_text("stopped")
    # xterm.js's own <style> elements are refused (and copied into constructed sheets, which
    # apply: its theme's white text); nothing else is
    assert {m.split(" violates")[0] for m in refused + watcher_refused} <= {"Applying inline style"}
    expect(rows).to_have_css("color", "rgb(255, 255, 255)")


class LateLease(SimDriver):
    """The sim driver, whose guests have no address until `leased` is set (a guest booting)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.leased = threading.Event()

    def nic_addresses(self, name: str) -> dict[str, list[str]]:
        return super().nic_addresses(name) if self.leased.is_set() else {}


def test_the_console_pages_nic_list_follows_the_address_the_vm_takes(browser, tmp_path, i7):  # noqa: F811
    """The page is opened while the guest has no address yet: the address its
    agent reports later shows up in the NIC list, as the other pages refresh."""
    from playwright.sync_api import expect

    local = LocalCluster(tmp_path, f"sqlite:///{tmp_path / 'controller.db'}", i7)
    driver = LateLease(networks=["default"])
    try:
        local.add_host("edge-1", driver, AgentSettings(domain_type="qemu", default_network="default"))
        created = local.http.post("/api/v1/vms", json={"name": "web", "vcpus": 1, "memory_mib": 256})
        assert created.status_code == 201, created.text
        page = browser.new_page(viewport={"width": 1000, "height": 700})
        log_in(page, local)
        page.goto(f"{local.url}/#/console/web")
        nics = page.get_by_test_id("vm-nics")
        expect(nics).to_contain_text("no address yet", timeout=15000)
        expect(page.get_by_test_id("console-status")).to_have_attribute("data-mode", "write", timeout=15000)
        driver.leased.set()
        local.wait(
            lambda: bool(local.http.get("/api/v1/vms/web").json()["addresses"]), "the address reported"
        )
        expect(nics).to_contain_text("198.51.100.", timeout=10000)  # within a few refreshes
        expect(page.get_by_test_id("console-status")).to_have_attribute("data-mode", "write")  # kept open
    finally:
        local.close()
