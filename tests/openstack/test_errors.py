"""The cloud's exceptions, translated once: each to its pinfold code, the
cloud's words kept in one line as the detail, never a traceback. The
exceptions are openstacksdk's own, made by `raise_from_response` from real
`requests` responses carrying Nova's and Neutron's bodies, keystoneauth's
own, and a real connection refused on loopback."""

from __future__ import annotations

import json
import socket

import pytest
import requests
from keystoneauth1 import exceptions as ksa
from openstack import exceptions as sdk

from pinfold.model.errors import ErrorCode, PinfoldError
from pinfold.openstack.cloud import Cloud
from pinfold.openstack.errors import MAX_DETAIL, fault_error, translate
from pinfold.openstack.settings import CloudSettings


def _raised(status: int, message: str, kind: str = "computeFault") -> sdk.HttpException:
    """The exception openstacksdk raises for a response of `status` with Nova's JSON error body."""
    response = requests.Response()
    response.status_code = status
    response.headers["content-type"] = "application/json"
    response._content = json.dumps({kind: {"code": status, "message": message}}).encode()
    response.url = "http://127.0.0.1:8774/v2.1/servers"
    with pytest.raises(sdk.HttpException) as caught:
        sdk.raise_from_response(response)
    return caught.value


@pytest.mark.parametrize(
    ("status", "message", "code"),
    [
        (
            403,
            "Quota exceeded for instances: Requested 1, but already used 2 of 2 instances",
            ErrorCode.QUOTA_EXCEEDED,
        ),
        (413, "Maximum number of ports exceeded (quota)", ErrorCode.QUOTA_EXCEEDED),
        (
            403,
            "Policy doesn't allow os_compute_api:servers:create to be performed.",
            ErrorCode.CLOUD_AUTH_FAILED,
        ),
        (401, "The request you have made requires authentication.", ErrorCode.CLOUD_AUTH_FAILED),
        # the lab's answer to a flavor of disk 0: a 403 that is no matter of credentials
        (
            403,
            "Only volume-backed servers are allowed for flavors with zero disk.",
            ErrorCode.INVALID_REQUEST,
        ),
        (400, "Flavor m9.huge could not be found.", ErrorCode.UNKNOWN_FLAVOR),
        (400, "Invalid flavorRef provided.", ErrorCode.UNKNOWN_FLAVOR),
        (400, "Image 0ab1 could not be found.", ErrorCode.UNKNOWN_IMAGE),
        (400, "Invalid imageRef provided.", ErrorCode.UNKNOWN_IMAGE),
        (400, "Can not find requested image", ErrorCode.UNKNOWN_IMAGE),  # Nova, for an image id it lacks
        (400, "Network 77aa could not be found.", ErrorCode.UNKNOWN_NETWORK),
        (404, "Flavor 8ff0 could not be found.", ErrorCode.UNKNOWN_FLAVOR),
        (404, "Instance 1234 could not be found.", ErrorCode.UNKNOWN_VM),
        (409, "Cannot 'suspend' instance 1234 while it is in vm_state suspended", ErrorCode.INVALID),
        (400, "Invalid input for field/attribute name.", ErrorCode.INVALID_REQUEST),
        (500, "Unexpected API Error.", ErrorCode.HYPERVISOR_FAILED),
        (503, "Service Unavailable", ErrorCode.HYPERVISOR_FAILED),
    ],
)
def test_an_http_answer_is_its_code_with_the_clouds_words(status: int, message: str, code: ErrorCode) -> None:
    error = translate(_raised(status, message))
    assert error.code is code
    assert error.detail == f"{status}: {message}"


def test_a_404_names_what_the_caller_looked_for() -> None:
    assert (
        translate(_raised(404, "Resource not found"), missing=ErrorCode.NOT_FOUND).code is ErrorCode.NOT_FOUND
    )


def test_keystones_refusal_is_an_auth_failure() -> None:
    error = translate(
        ksa.Unauthorized(message="The request you have made requires authentication.", http_status=401)
    )
    assert error.code is ErrorCode.CLOUD_AUTH_FAILED
    assert error.detail == "The request you have made requires authentication. (HTTP 401)"
    assert translate(ksa.MissingRequiredOptions([])).code is ErrorCode.CLOUD_AUTH_FAILED


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_cloud_that_does_not_answer_is_unreachable_at_connect() -> None:
    """A real connection refused on loopback, through openstacksdk's own auth."""
    settings = CloudSettings(
        auth_url=f"http://127.0.0.1:{_closed_port()}/v3",
        user_id="u",
        password="p",
        project_id="p",
        timeout_s=5,
    )
    with pytest.raises(PinfoldError) as caught:
        Cloud.connect(settings, "test")
    assert caught.value.code is ErrorCode.CLOUD_UNREACHABLE
    assert "127.0.0.1" in caught.value.detail
    assert "Traceback" not in caught.value.detail
    assert "\n" not in caught.value.detail


def test_settings_that_name_no_cloud_are_refused_before_any_call() -> None:
    with pytest.raises(PinfoldError) as caught:
        Cloud.connect(CloudSettings(auth_url="http://127.0.0.1:1/v3", user_id="u"), "test")
    assert caught.value.code is ErrorCode.CLOUD_AUTH_FAILED
    assert caught.value.detail == (
        "no clouds.yaml cloud named, and the explicit settings lack password, "
        "a project (project_id or project_name)"
    )


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        ("No valid host was found. There are not enough hosts available.", ErrorCode.NO_VALID_HOST),
        ("Quota exceeded for cores", ErrorCode.QUOTA_EXCEEDED),
        ("Build of instance 12 aborted: Failed to allocate the network(s)", ErrorCode.HYPERVISOR_FAILED),
        ("", ErrorCode.HYPERVISOR_FAILED),
    ],
)
def test_a_servers_fault_is_its_code(fault: str, code: ErrorCode) -> None:
    error = fault_error(fault)
    assert error.code is code
    assert error.detail == (fault or "the server went to ERROR without a fault")


def test_the_detail_is_one_bounded_line() -> None:
    error = translate(_raised(500, "Traceback (most recent call last):\n  File x\n" + "y" * 1000))
    assert "\n" not in error.detail
    assert len(error.detail) == MAX_DETAIL
    assert error.detail.endswith("...")


def test_a_timeout_waiting_and_other_library_errors_are_the_hypervisors() -> None:
    assert (
        translate(sdk.ResourceTimeout("Timeout waiting for the server")).code is ErrorCode.HYPERVISOR_FAILED
    )
    assert translate(sdk.ResourceFailure("No valid host was found")).code is ErrorCode.NO_VALID_HOST
    kept = PinfoldError(ErrorCode.INVALID, "already")
    assert translate(kept) is kept
