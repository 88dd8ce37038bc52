"""Token files and the token check shared by the agent and the controller."""

from __future__ import annotations

import stat
import threading

import httpx
import pytest
from fastapi import Depends, FastAPI

from pinfold.tokens import MIN_TOKEN_LENGTH, TokenError, token_in, write_token
from pinfold.web import install_error_handlers, token_check
from tests.servers import Served


def test_a_new_token_is_written_whole_with_mode_0600_and_kept(tmp_path):
    path = tmp_path / "data" / "admin.token"
    token = token_in(path)
    assert len(token) >= MIN_TOKEN_LENGTH
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert token_in(path) == token
    assert [p.name for p in path.parent.iterdir()] == ["admin.token"]  # no scratch file left


def test_write_token_replaces_the_file_whole_with_mode_0600(tmp_path):
    path = tmp_path / "data" / "host.token"
    write_token(path, "first-credential-0123456789")
    write_token(path, "second-credential-0123456789")
    assert token_in(path) == "second-credential-0123456789"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["host.token"]  # no scratch file left


@pytest.mark.parametrize("content", ["", "\n", "short\n"], ids=["empty", "blank", "short"])
def test_a_token_file_without_a_usable_token_is_refused(tmp_path, content):
    path = tmp_path / "agent.token"
    path.write_text(content)
    with pytest.raises(TokenError, match="no usable token"):
        token_in(path)
    assert path.read_text() == content  # left for the operator to look at


def test_processes_starting_together_agree_on_one_token(tmp_path):
    path = tmp_path / "agent.token"
    seen: list[str] = []
    threads = [threading.Thread(target=lambda: seen.append(token_in(path))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 8  # no thread died on the way
    assert len(set(seen)) == 1
    assert seen[0] == path.read_text().strip()


@pytest.fixture(scope="module")
def guarded() -> object:
    """A route guarded by a check that was (wrongly) handed an empty token too."""
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/thing", dependencies=[Depends(token_check("", "x" * 20))])
    def thing() -> dict[str, bool]:
        return {"ok": True}

    served = Served(app)
    yield served
    served.stop()


@pytest.mark.parametrize(
    ("headers", "params", "status"),
    [
        ({}, {}, 401),
        ({}, {"token": ""}, 401),
        ({"Authorization": "Bearer wrong"}, {}, 401),
        ({"Authorization": "Bearer " + "x" * 20}, {}, 200),
    ],
    ids=["none", "empty", "wrong", "right"],
)
def test_an_empty_token_never_opens_a_route(guarded, headers, params, status):
    response = httpx.post(f"{guarded.url}/thing", headers=headers, params=params)
    assert response.status_code == status
    if status == 401:
        assert response.json()["error"] == "unauthorized"


def test_a_filesystem_without_hard_links_is_a_clear_error(tmp_path, monkeypatch):
    def no_links(source: object, target: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr("pinfold.tokens.os.link", no_links)
    path = tmp_path / "admin.token"
    with pytest.raises(TokenError, match="cannot create"):
        token_in(path)
    assert list(tmp_path.iterdir()) == []  # neither the token nor the scratch file
