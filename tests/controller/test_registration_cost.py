"""What registering a host and restarting the controller cost (issue 16):
10,000 hosts took 128-250 s to register, 13-25 ms each. A profile said: the
topology parsed again at each registration (half of it), its canonical JSON
hashed, its stored document read back and decoded, and two commits (the host,
then its "host registered" event). A restart read every host's whole row,
its last heartbeat's JSON with it, to build a picture that needs only sizes.

These tests count the work itself (parses, commits, statements), not time."""

from __future__ import annotations

import copy
import gc
import re
from pathlib import Path
from typing import Any

from sqlalchemy import event
from typer.testing import CliRunner

from pinfold.cli import app
from pinfold.controller import daemon
from pinfold.controller.database import connect
from pinfold.controller.service import Controller
from pinfold.controller.store import ControllerStore
from pinfold.model.vm import VMRequest
from pinfold.topology import slackvm_json


class Accepting:
    def create(self, request: VMRequest) -> dict[str, Any]:
        return {"pinning": []}


def controller_on(url: str) -> Controller:
    agent = Accepting()
    return Controller(ControllerStore(connect(url)), lambda host: agent, heartbeat_period_s=3600)  # type: ignore[arg-type,return-value]


def counting(engine: Any) -> tuple[list[str], list[str]]:
    """(every statement run, each commit of a transaction that wrote), as they happen."""
    statements: list[str] = []
    commits: list[str] = []

    def statement(conn: Any, _cursor: Any, text: str, *_: Any) -> None:
        statements.append(text)
        if text.lstrip().split(" ", 1)[0].upper() in ("INSERT", "UPDATE", "DELETE"):
            conn.info["wrote"] = True

    def commit(conn: Any) -> None:
        if conn.info.pop("wrote", False):
            commits.append("commit")

    event.listen(engine, "before_cursor_execute", statement)
    event.listen(engine, "commit", commit)
    return statements, commits


def test_a_registration_commits_once_and_parses_a_known_model_never_again(
    database_url, i7_topology, monkeypatch
):
    controller = controller_on(database_url)
    parses: list[int] = []
    parse = slackvm_json.from_dict

    def counted(document: Any) -> Any:
        parses.append(1)
        return parse(document)

    monkeypatch.setattr(slackvm_json, "from_dict", counted)  # every caller looks it up in the module
    try:
        controller.register("h0", "http://127.0.0.1:9000", i7_topology, 2, 0)
        first = len(parses)
        statements, commits = counting(controller.store.engine)
        for i in range(1, 4):  # the same model again, each time a new document as the API parses one
            controller.register(f"h{i}", f"http://127.0.0.1:{9000 + i}", copy.deepcopy(i7_topology), 2, 0)
        assert len(parses) == first, f"{len(parses) - first} parses for 3 hosts of a known model"
        assert len(commits) == 3, f"{len(commits)} commits for 3 registrations"
        assert not [s for s in statements if re.search(r"topology_documents\.document\b", s)]
        kinds = [e.kind for e in controller.store.events()]
        assert kinds.count("host registered") == 4
        hosts = controller.store.hosts()
        assert len({h.topology_digest for h in hosts}) == 1
        assert all(h.topology == i7_topology for h in hosts)
    finally:
        controller.store.engine.dispose()


def test_another_model_gets_its_own_document(database_url, i7_topology):
    controller = controller_on(database_url)
    bigger = copy.deepcopy(i7_topology)
    bigger["memset"]["total"] += 1024
    try:
        controller.register("h0", "http://127.0.0.1:9000", i7_topology, 2, 0)
        controller.register("h1", "http://127.0.0.1:9001", bigger, 2, 0)
        by_id = {h.id: h for h in controller.store.hosts()}
        assert by_id["h0"].topology_digest != by_id["h1"].topology_digest
        assert by_id["h1"].topology == bigger
    finally:
        controller.store.engine.dispose()


def test_a_restart_builds_its_picture_without_reading_heartbeats(tmp_path: Path, i7_topology):
    url = f"sqlite:///{tmp_path / 'controller.db'}"
    first = controller_on(url)
    for i in range(3):
        first.register(f"h{i}", f"http://127.0.0.1:{9000 + i}", i7_topology, 2, 0)
        first.heartbeat(f"h{i}", {"vms": {}, "usage": {"cpu": [0.5] * 8}})
    first.create(VMRequest("before", 2, 512))
    first.store.engine.dispose()
    engine_store = ControllerStore(connect(url))
    statements, _ = counting(engine_store.engine)
    agent = Accepting()
    again = Controller(engine_store, lambda host: agent, heartbeat_period_s=3600)  # type: ignore[arg-type,return-value]
    try:
        assert not [s for s in statements if re.search(r"\bhosts\.heartbeat\b", s)], statements
        placed = again.create(VMRequest("after", 2, 512))
        assert placed.created
        assert again.scheduler.hosts == ("h0", "h1", "h2")
    finally:
        engine_store.engine.dispose()


def test_a_restarts_first_create_parses_no_topology_its_picture_parsed(
    tmp_path: Path, i7_topology, monkeypatch
):
    """The picture and the reservation's check share one parse per model: the
    first create after a restart parsed its host's document again (a large
    server's: 20 ms)."""
    url = f"sqlite:///{tmp_path / 'controller.db'}"
    first = controller_on(url)
    for i in range(3):
        first.register(f"h{i}", f"http://127.0.0.1:{9000 + i}", i7_topology, 2, 0)
    first.store.engine.dispose()
    parses: list[int] = []
    parse = slackvm_json.from_dict

    def counted(document: Any) -> Any:
        parses.append(1)
        return parse(document)

    monkeypatch.setattr(slackvm_json, "from_dict", counted)
    again = controller_on(url)
    try:
        assert len(parses) == 1  # the picture's, for the one model of the three hosts
        for i in range(3):
            assert again.create(VMRequest(f"after{i}", 2, 512)).created
        assert len(parses) == 1, f"{len(parses) - 1} parses by creates on hosts of a parsed model"
    finally:
        again.store.engine.dispose()


def test_scheduling_reads_every_hosts_liveness_from_its_index_alone(tmp_path: Path, i7_topology):
    """With SQLite, a host's liveness columns come after its heartbeat's JSON
    in the table (migrations 0002, 0003): the index `ix_hosts_liveness` (0010)
    has them all, so the read each second touches no heartbeat."""
    controller = controller_on(f"sqlite:///{tmp_path / 'controller.db'}")
    try:
        for i in range(3):
            controller.register(f"h{i}", f"http://127.0.0.1:{9000 + i}", i7_topology, 2, 0)
            controller.heartbeat(f"h{i}", {"vms": {}, "usage": {"cpu": [0.5] * 8}})
        statements, _ = counting(controller.store.engine)
        assert [h.id for h in controller.store.liveness()] == ["h0", "h1", "h2"]
        (read,) = statements
        with controller.store.engine.connect() as connection:
            plan = connection.exec_driver_sql("EXPLAIN QUERY PLAN " + read).fetchall()
        assert [row[-1] for row in plan] == ["SCAN hosts USING COVERING INDEX ix_hosts_liveness"], plan
        assert controller.schedulable_hosts() == ["h0", "h1", "h2"]
    finally:
        controller.store.engine.dispose()


def test_the_controller_starts_without_the_collector_and_serves_with_it(tmp_path: Path, monkeypatch):
    """`pinfold controller` builds its picture with the cyclic collector off,
    then freezes what start-up made and turns the collector on before it
    serves; a start refused for its settings turns it on again too."""
    seen: list[tuple[bool, int]] = []
    monkeypatch.setattr(
        "pinfold.serving.run", lambda *args, **kwargs: seen.append((gc.isenabled(), gc.get_freeze_count()))
    )
    built: list[bool] = []
    build = daemon.build_controller

    def watched(*args: Any, **kwargs: Any) -> Any:
        built.append(gc.isenabled())
        return build(*args, **kwargs)

    monkeypatch.setattr(daemon, "build_controller", watched)
    env = {"PINFOLD_CONTROLLER_ADMIN_TOKEN": "a" * 32, "PINFOLD_CONTROLLER_AGENT_TOKEN": "b" * 32}
    try:
        result = CliRunner().invoke(app, ["controller", "--data-dir", str(tmp_path), "--port", "1"], env=env)
        assert result.exit_code == 0, result.output
        assert built == [False]
        ((enabled, frozen),) = seen
        assert enabled
        assert frozen > 0
        gc.unfreeze()
        refused = CliRunner().invoke(
            app, ["controller", "--data-dir", str(tmp_path), "--policy", "nonsense"], env=env
        )
        assert refused.exit_code != 0, refused.output
        assert gc.isenabled()
    finally:
        gc.unfreeze()
        gc.enable()
