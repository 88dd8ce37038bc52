"""Take the README's dashboard screenshots: a controller and two sim agents
(the bundled i7 topology and a 64-CPU EPYC slice), VMs of three levels, then
the overview and a host page in headless Chromium. Run from the repository:

    .venv/bin/python scripts/screenshots.py docs/screenshots
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
I7 = ROOT / "src" / "pinfold" / "data" / "topology_i7-1185G7.json"
EPYC = ROOT.parent / "shared" / "data" / "topologies" / "topology_EPYC-7662.json"
ADMIN, AGENT = "screenshot-admin-0123456789", "screenshot-agent-0123456789"


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PINFOLD_CONTROLLER_ADMIN_TOKEN=ADMIN, PINFOLD_CONTROLLER_AGENT_TOKEN=AGENT,
               PINFOLD_AGENT_ENROLMENT_TOKEN=AGENT, PINFOLD_AGENT_MONITOR_PERIOD_S="1")  # fmt: skip
    python = [sys.executable, "-m", "pinfold"]
    url = "http://127.0.0.1:18700"
    with tempfile.TemporaryDirectory() as tmp:
        processes = [subprocess.Popen([*python, "controller", "--port", "18700", "--data-dir", f"{tmp}/c",
                                       "--heartbeat-period", "1"], env=env)]  # fmt: skip
        try:
            time.sleep(3)
            for i, (name, topology, exclude) in enumerate([("edge-1", I7, ""), ("rack-7", EPYC, "64-255")]):
                command = [
                    *python,
                    "agent",
                    "--driver",
                    "sim",
                    "--topology",
                    str(topology),
                    "--host-id",
                    name,
                ]
                command += ["--port", str(18701 + i), "--data-dir", f"{tmp}/a{i}", "--controller-url", url]
                command += ["--exclude-cpus", exclude] if exclude else []
                processes.append(subprocess.Popen(command, env=env))
            time.sleep(5)
            headers = {"Authorization": f"Bearer {ADMIN}"}
            vms = [("db", 4, 8192, 1.0), ("cache", 2, 4096, 1.0), ("web-1", 2, 2048, 2.0), ("web-2", 2, 2048, 2.0),
                   ("ci-1", 4, 2048, 3.0), ("ci-2", 2, 1024, 3.0), ("batch", 8, 4096, 3.0)]  # fmt: skip
            for name, vcpus, memory, ratio in vms:
                body = {"name": name, "vcpus": vcpus, "memory_mib": memory, "ratio": ratio}
                httpx.post(f"{url}/api/v1/vms", json=body, headers=headers, timeout=30).raise_for_status()
            time.sleep(8)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"]
                )
                page = browser.new_page(viewport={"width": 1100, "height": 700})
                page.goto(url + "/")
                page.get_by_test_id("token").fill(ADMIN)
                page.get_by_test_id("login-button").click()
                page.wait_for_selector("[data-testid=host-row]")
                page.screenshot(path=str(out / "overview.png"), full_page=True)
                host = httpx.get(f"{url}/api/v1/vms/db", headers=headers).json()["host"]
                page.goto(f"{url}/#/hosts/{host}")
                page.wait_for_selector("[data-testid=history]")
                page.screenshot(path=str(out / "host.png"), full_page=True)
                browser.close()
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(timeout=30)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
