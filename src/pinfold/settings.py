"""Settings in layers, as both daemons read them: defaults, then a TOML file,
then `<PREFIX><KEY>` environment variables, then flags (each overriding the
one before). Comma-separated strings become lists for the keys that hold lists."""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, ValidationError

__all__ = ["Networks", "SettingsError", "describe", "environment", "layered"]


class SettingsError(ValueError):
    """A file that cannot be read as TOML; names the file."""


def layered(
    path: Path | None,
    flags: Mapping[str, Any],
    environ: Mapping[str, str],
    prefix: str,
    keys: Iterable[str],
    list_keys: Iterable[str] = (),
) -> dict[str, Any]:
    """The merged raw values, for a pydantic model to validate."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values.update(tomllib.loads(path.read_text(encoding="utf-8")))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"{path}: {exc}") from None
    for key in keys:
        if prefix + key.upper() in environ:
            values[key] = environ[prefix + key.upper()]
    values.update({key: value for key, value in flags.items() if value is not None})
    for key in list_keys:
        if isinstance(values.get(key), str):
            values[key] = [part.strip() for part in values[key].split(",") if part.strip()]
    return values


def describe(error: ValidationError) -> str:
    """pydantic's errors as "key: problem; key: problem"."""
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())


def environment(environ: Mapping[str, str] | None) -> dict[str, str]:
    return dict(os.environ if environ is None else environ)


def _networks(value: tuple[str, ...]) -> tuple[str, ...]:
    for network in value:
        ipaddress.ip_network(network, strict=False)  # ValueError names the bad one
    return value


#: CIDRs, each checked (e.g. the networks opened to SlackVM's token-less clients)
Networks = Annotated[tuple[str, ...], AfterValidator(_networks)]
