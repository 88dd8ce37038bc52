"""The `pinfold` command, run as a user runs it (a real subprocess) and
through Typer's runner for the error paths."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from pinfold.cli import app
from pinfold.topology import Topology
from tests.conftest import EPYC_EXP, I7

runner = CliRunner()


def test_demo_runs_end_to_end_and_shows_vnodes_pins_and_a_refusal():
    result = subprocess.run(
        [sys.executable, "-m", "pinfold", "demo"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "deployed web-1 (2 vCPU at 1.0) pinned to 0,4" in out
    assert "deployed batch-1 (2 vCPU at 2.0) pinned to 1-3,5-7" in out
    assert "refused huge" in out
    assert "not enough cpu" in out
    assert "0/3 hosts fit: 2 not enough cpu at 1.0, 1 not enough memory" in out


def test_demo_accepts_another_topology():
    result = runner.invoke(app, ["demo", "--topology", str(EPYC_EXP)])
    assert result.exit_code == 0, result.output
    assert "232 CPUs" in result.output


def test_topology_show_json_is_loadable_slackvm(tmp_path):
    result = runner.invoke(app, ["topology", "show", "--topology", str(I7), "--json", "--exclude", "0,4"])
    assert result.exit_code == 0, result.output
    path = tmp_path / "t.json"
    path.write_text(result.stdout)
    assert Topology.load(path).usable_cpus == (1, 2, 3, 5, 6, 7)


def test_topology_save_writes_this_host(tmp_path):
    out = tmp_path / "host.json"
    result = runner.invoke(app, ["topology", "save", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["cpuset"]["host_count"] == Topology.discover().host_count


def test_bad_exclusion_list_is_a_usage_error_not_a_traceback():
    result = runner.invoke(app, ["topology", "show", "--topology", str(I7), "--exclude", "x-1"])
    assert result.exit_code == 2
    assert "bad CPU list" in result.output


def test_missing_topology_file_is_a_usage_error(tmp_path):
    result = runner.invoke(app, ["topology", "show", "--topology", str(tmp_path / "none.json")])
    assert result.exit_code == 2
    assert "No such file" in result.output


def test_no_cli_module_shadows_the_packages_console() -> None:
    """`pinfold.cli.console` is the package's Rich console: a submodule of that
    name, once imported, replaced it (Python sets a package's attribute to each
    submodule loaded), and `pinfold demo` failed on `console.rule`."""
    import importlib
    import pkgutil

    import rich.console

    import pinfold.cli

    for module in pkgutil.iter_modules(pinfold.cli.__path__):
        importlib.import_module(f"pinfold.cli.{module.name}")
    assert isinstance(pinfold.cli.console, rich.console.Console)


def test_the_cli_prints_what_it_is_given_without_emoji() -> None:
    """Rich turns `:cd:` into an emoji by default: a VM's MAC 52:54:00:cd:cc:e2
    was shown as 52:54:00💿cc:e2 in `pinfold vm show` (a test with a random MAC
    caught it). Every console of the CLI prints a MAC as it is."""
    import importlib
    import pkgutil

    from rich.console import Console
    from rich.table import Table

    import pinfold.cli

    mac = "52:54:00:cd:cc:e2"
    consoles = []
    for module in pkgutil.iter_modules(pinfold.cli.__path__):
        found = getattr(importlib.import_module(f"pinfold.cli.{module.name}"), "console", None)
        if isinstance(found, Console):
            consoles.append(found)
    assert len(consoles) >= 3
    for console in consoles:
        table = Table("MAC")
        table.add_row(mac)
        with console.capture() as captured:
            console.print(table)
        assert mac in captured.get()
