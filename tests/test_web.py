"""The error shape shared by the agent's and the controller's apps."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.exceptions import HTTPException

from pinfold.web import install_error_handlers, json_answer
from tests.servers import Served


@pytest.mark.parametrize(
    ("status", "code"), [(418, "i'm a teapot"), (499, "499")], ids=["listed", "unlisted"]
)
def test_an_http_exception_of_any_status_keeps_the_error_shape(status, code):
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/odd")
    def odd() -> None:
        raise HTTPException(status, "odd")

    served = Served(app)
    try:
        response = httpx.get(f"{served.url}/odd")
    finally:
        served.stop()
    assert response.status_code == status
    assert response.json() == {"error": code, "code": code, "detail": "GET /odd: odd"}


class _State(enum.StrEnum):
    RUNNING = "running"


@pytest.mark.parametrize(
    "content",
    [
        {
            "name": "vm1",
            "state": _State.RUNNING,
            "ratio": 2.0,
            "pinning": (1, 2, 3),
            "nics": [],
            "image": None,
        },
        {"vms": [{"name": "a\u00e9", "status": 409, "detail": "x"}]},
        {"path": Path("/img/base.qcow2"), "state": _State.RUNNING},  # not JSON's own: FastAPI's encoder
    ],
    ids=["view", "batch", "fallback"],
)
def test_a_json_answer_is_what_fastapi_sends_for_the_same_content(content: dict[str, Any]) -> None:
    """The bytes and status FastAPI's own answer has, whether `json_answer`
    encodes the content alone or needs FastAPI's encoder for it."""
    app = FastAPI()

    @app.get("/fastapi", status_code=201, response_model=None)
    def by_fastapi() -> dict[str, Any]:
        return content

    @app.get("/ours", response_model=None)
    def by_us() -> object:
        return json_answer(content, 201)

    served = Served(app)
    try:
        theirs, ours = httpx.get(f"{served.url}/fastapi"), httpx.get(f"{served.url}/ours")
    finally:
        served.stop()
    assert (ours.status_code, ours.headers["content-type"]) == (201, "application/json")
    assert ours.content == theirs.content
