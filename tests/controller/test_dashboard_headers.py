"""The dashboard's pages and files come with a Content-Security-Policy (its
own scripts and styles only, no inline ones, no framing) and X-Frame-Options;
the API's answers are left as they are."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pinfold.controller.api import create_app
from pinfold.controller.config import ControllerConfig
from pinfold.controller.daemon import build_controller
from tests.servers import Served

ADMIN = "admin-token-0123456789abcdef"


@pytest.fixture
def controller_url(tmp_path: Path) -> Iterator[str]:
    controller, clients = build_controller(
        ControllerConfig(data_dir=tmp_path), "agent-token-0123456789abcdef"
    )
    served = Served(create_app(controller, ADMIN, "agent-token-0123456789abcdef"))
    try:
        yield served.url
    finally:
        served.stop()
        clients.close()
        controller.store.engine.dispose()


@pytest.mark.parametrize("path", ["/", "/dashboard/app.js", "/dashboard/app.css", "/dashboard/missing.js"])
def test_the_dashboard_is_sent_with_its_security_headers(controller_url: str, path: str) -> None:
    response = httpx.get(controller_url + path)
    policy = response.headers.get("content-security-policy", "")
    directives = {part.split()[0]: part.split()[1:] for part in policy.split(";") if part.strip()}
    assert directives.get("default-src") == ["'self'"], policy
    assert directives.get("frame-ancestors") == ["'none'"], policy
    assert "'unsafe-inline'" not in policy
    assert response.headers.get("x-frame-options") == "DENY"
    assert response.headers.get("x-content-type-options") == "nosniff"


def test_the_page_has_no_inline_script_or_style_for_the_policy_to_block() -> None:
    page = (Path(__file__).parents[2] / "src/pinfold/controller/dashboard/index.html").read_text()
    assert "<style" not in page
    assert " style=" not in page
    assert "<script>" not in page  # every script has a src
    assert " on" not in page.replace(" onl", "")  # no onclick= and the like


def test_the_api_answers_are_left_alone(controller_url: str) -> None:
    response = httpx.get(controller_url + "/healthz")
    assert "content-security-policy" not in response.headers
