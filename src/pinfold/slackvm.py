"""SlackVM's HTTP vocabulary, shared by the agent (SlackVM's local scheduler
routes) and the controller (its global scheduler routes), so that SlackVM's own
client and global scheduler work against pinfold unchanged.

SlackVM is a Flask app whose views return dicts and strings. Its answers are
therefore Flask's production bytes: a dict is `json.dumps(obj, sort_keys=True,
separators=(",", ":"), ensure_ascii=True) + "\\n"` as `application/json`
(Flask's DefaultJSONProvider outside debug mode), a string is `text/html;
charset=utf-8`; both with status 200. A missing parameter is SlackVM's "Wrong
usage" text. Where SlackVM itself would crash with a 500 page (a malformed
number, a reused name, an image outside the image directories), the answer is
`{"reason": "<pinfold's stable reason code>", "success": false}`: never a 5xx,
never a 422. Nothing here touches an agent or a controller: the routes hand in
what to do as callables.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.params import Depends
from fastapi.responses import Response

from pinfold.model.vm import MAX_IMAGE_LENGTH, MAX_RATIO, MAX_VCPUS, MAX_VM_MEMORY_MIB, valid_name

__all__ = [
    "DOES_NOT_EXIST",
    "HOME",
    "INVALID",
    "NO_NODE",
    "UNREGISTERED",
    "Deploy",
    "Progress",
    "add_deploy_and_remove",
    "answer_deploy",
    "answer_progress",
    "answer_remove",
    "as_json",
    "as_text",
    "reason_for",
]

#: what SlackVM's local scheduler answers at `/`
HOME = "Scheduler is working and waiting for instructions"
#: SlackVM's reasons, word for word
NO_NODE = "No appropriate node found"
UNREGISTERED = "Unregistered VM"
DOES_NOT_EXIST = "does not exist"
#: pinfold's reason for a parameter SlackVM would crash on (not a number, out of range)
INVALID = "invalid request"
_RESOURCE = {
    "not enough cpu": "Not enough space on res cpu",
    "not enough memory": "Not enough space on res mem",
}

#: each route's parameters (all required, as in SlackVM) and its usage example
_USAGE: Mapping[str, tuple[tuple[str, ...], str]] = {
    "deploy": (
        ("name", "cpu", "mem", "oc", "qcow2"),
        "/deploy?name=example&cpu=1&mem=1&oc=1&qcow2=/var/lib/libvirt/images/volume.qcow2",
    ),
    "remove": (("name",), "/remove?name=example"),
    "progress": (("cpu", "mem", "oc"), "/progress?cpu=1&mem=1&oc=1.0"),
}
_INTEGER = re.compile(r"[0-9]{1,7}")
MAX_MEMORY_GIB = MAX_VM_MEMORY_MIB / 1024


class _MalformedError(ValueError):
    """A parameter SlackVM would crash on (its `int()` or `float()` raises)."""


@dataclass(frozen=True, slots=True)
class Deploy:
    """A checked `/deploy`: memory in MiB (SlackVM takes GiB), `image` empty for a diskless VM."""

    name: str
    vcpus: int
    memory_mib: int
    ratio: float
    image: str


@dataclass(frozen=True, slots=True)
class Progress:
    """A checked `/progress`: 0 vCPUs and 0 MiB are fine (a score, not a VM)."""

    vcpus: int
    memory_mib: int
    ratio: float


def as_json(value: Any) -> Response:
    """`value` as Flask's production jsonify writes it (200)."""
    body = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True) + "\n"
    return Response(body.encode("ascii"), media_type="application/json")


def as_text(text: str) -> Response:
    """A string as a Flask view returns it (200, text/html)."""
    return Response(text.encode(), media_type="text/html; charset=utf-8")


def reason_for(code: str) -> str:
    """SlackVM's reason for a pinfold refusal code: its own words for the
    two it has (CPU, memory), pinfold's stable code for the rest."""
    return _RESOURCE.get(code, code)


def _outcome(reason: str | None) -> Response:
    return as_json({"reason": reason, "success": reason is None})


def _wrong_usage(request: Request, route: str) -> Response:
    """SlackVM's usage text, addressed to this server as the client reached it
    (the Host header; the scheme's port when it names none). The host is
    escaped: the text is HTML and the header is the client's."""
    url = request.url
    netloc = url.netloc if url.port is not None else f"{url.netloc}:{443 if url.scheme == 'https' else 80}"
    return as_text(f"Wrong usage: {url.scheme}://{html.escape(netloc)}{_USAGE[route][1]}")


def _arguments(request: Request, route: str) -> dict[str, str] | None:
    """The route's parameters (the first of each, as Flask's `args.get`), or
    None when one is missing. Present but empty is present, as in SlackVM."""
    found = {}
    for name in _USAGE[route][0]:
        values = request.query_params.getlist(name)
        if not values:
            return None
        found[name] = values[0]
    return found


def _integer(text: str, low: int, high: int) -> int:
    if not _INTEGER.fullmatch(text) or not low <= int(text) <= high:
        raise _MalformedError(text)
    return int(text)


def _number(text: str, low: float, high: float, *, above_low: bool = False) -> float:
    try:
        value = float(text)
    except ValueError as error:
        raise _MalformedError(text) from error
    if not math.isfinite(value) or not low <= value <= high or (above_low and value == low):
        raise _MalformedError(text)
    return value


def _deploy(args: Mapping[str, str]) -> Deploy:
    name, image = args["name"], args["qcow2"]
    if not valid_name(name) or len(image) > MAX_IMAGE_LENGTH:
        raise _MalformedError(name)
    vcpus = _integer(args["cpu"], 1, MAX_VCPUS)
    memory_gib = _number(args["mem"], 0.0, MAX_MEMORY_GIB, above_low=True)
    ratio = _number(args["oc"], 1.0, MAX_RATIO)
    return Deploy(name, vcpus, max(1, round(memory_gib * 1024)), ratio, image)


def _progress(args: Mapping[str, str]) -> Progress:
    vcpus = _integer(args["cpu"], 0, MAX_VCPUS)
    memory_gib = _number(args["mem"], 0.0, MAX_MEMORY_GIB)
    return Progress(vcpus, round(memory_gib * 1024), _number(args["oc"], 1.0, MAX_RATIO))


def answer_deploy(request: Request, deploy: Callable[[Deploy], str | None]) -> Response:
    """`/deploy`: `deploy` places the VM and returns None, or SlackVM's reason why not."""
    args = _arguments(request, "deploy")
    if args is None:
        return _wrong_usage(request, "deploy")
    try:
        asked = _deploy(args)
    except _MalformedError:
        return _outcome(INVALID)
    return _outcome(deploy(asked))


def answer_remove(request: Request, remove: Callable[[str], str | None]) -> Response:
    """`/remove`: `remove` removes the VM and returns None, or SlackVM's reason why not."""
    args = _arguments(request, "remove")
    if args is None:
        return _wrong_usage(request, "remove")
    return _outcome(remove(args["name"]))


def answer_progress(request: Request, score: Callable[[Progress], float]) -> Response:
    """`/progress`: `{"progress": <float>}`. A malformed number gets the usage
    text, as a missing one: SlackVM's global scheduler reads a text answer as a
    node that did not answer (its requester catches the JSON error) and goes
    on, where a JSON answer without a number would stop it."""
    args = _arguments(request, "progress")
    if args is None:
        return _wrong_usage(request, "progress")
    try:
        asked = _progress(args)
    except _MalformedError:
        return _wrong_usage(request, "progress")
    return as_json({"progress": float(score(asked))})


def add_deploy_and_remove(
    app: FastAPI,
    auth: Depends,
    deploy: Callable[[Deploy], str | None],
    remove: Callable[[str], str | None],
) -> None:
    """SlackVM's two mutating routes on `app`, guarded by `auth`: the agent's
    and the controller's differ only in what placing and removing mean."""

    @app.get("/deploy", dependencies=[auth])
    def slackvm_deploy(request: Request) -> Response:
        """SlackVM's `/deploy?name&cpu&mem&oc&qcow2` (mem in GiB; `qcow2=` empty: no disk)."""
        return answer_deploy(request, deploy)

    @app.get("/remove", dependencies=[auth])
    def slackvm_remove(request: Request) -> Response:
        """SlackVM's `/remove?name`."""
        return answer_remove(request, remove)
