"""The error shape shared by the agent's and the controller's apps."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from starlette.exceptions import HTTPException

from pinfold.web import install_error_handlers
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
