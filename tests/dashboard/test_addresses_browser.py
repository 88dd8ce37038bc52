"""VMs' addresses in the dashboard, in a real browser (as test_browser.py):
the VM list shows each VM's first address, the VM's console page its NICs
with their MACs and addresses, as the sim agents' heartbeats reported them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pinfold.agent.drivers import SimDriver
from tests.controller.cluster import LocalCluster
from tests.dashboard.test_browser import browser, log_in, shot  # noqa: F401  (browser: a fixture)


@pytest.fixture
def cluster(tmp_path, i7) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path, f"sqlite:///{tmp_path / 'controller.db'}", i7)
    local.add_host("edge-1", driver=SimDriver(networks=["lab"]))
    yield local
    local.close()


def test_the_vm_list_and_a_vms_page_show_its_addresses(browser, cluster):  # noqa: F811
    body = {"name": "web", "vcpus": 1, "memory_mib": 256, "nics": [{"network": "lab"}]}
    assert cluster.http.post("/api/v1/vms", json=body).status_code == 201
    assert (
        cluster.http.post("/api/v1/vms", json={"name": "bare", "vcpus": 1, "memory_mib": 256}).status_code
        == 201
    )
    cluster.wait(lambda: bool(cluster.http.get("/api/v1/vms/web").json()["addresses"]), "web's address")
    (nic,) = cluster.http.get("/api/v1/vms/web").json()["nics"]
    (address,) = nic["addresses"]
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    log_in(page, cluster)
    page.get_by_test_id("nav-vms").click()
    page.wait_for_selector(f"tr[data-vm=web] [data-testid=address]:text-is('{address}')")
    page.wait_for_selector("tr[data-vm=bare] [data-testid=address]:text-is('-')")
    shot(page, "vms-addresses")
    page.locator("tr[data-vm=web] a[data-console=web]").click()
    shown = page.wait_for_selector(f"[data-testid=vm-nics] li:has-text('{nic['mac']}')")
    assert shown is not None
    assert address in shown.inner_text()
    assert "lab" in shown.inner_text()
