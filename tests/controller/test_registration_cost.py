"""What registering a host and restarting the controller cost (issue 16):
10,000 hosts took 128-250 s to register, 13-25 ms each. A profile said: the
topology parsed again at each registration (half of it), its canonical JSON
hashed, its stored document read back and decoded, and two commits (the host,
then its "host registered" event). A restart read every host's whole row,
its last heartbeat's JSON with it, to build a picture that needs only sizes.

These tests count the work itself (parses, commits, statements), not time."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

from sqlalchemy import event

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
