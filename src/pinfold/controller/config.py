"""The controller's settings: defaults, then a TOML file, then
PINFOLD_CONTROLLER_* environment variables, then flags."""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pinfold.placement import POLICIES
from pinfold.tokens import token_in

__all__ = ["ControllerConfig", "ControllerConfigError", "load_controller_config"]

ENV_PREFIX = "PINFOLD_CONTROLLER_"


class ControllerConfigError(ValueError):
    """A setting that is missing, unknown or malformed; says which and where."""


class ControllerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: Path = Path.home() / ".local" / "share" / "pinfold" / "controller"
    listen: str = "127.0.0.1"
    port: int = Field(default=8100, ge=1, le=65535)
    #: SQLAlchemy URL; default: a SQLite file in the data directory
    database_url: str | None = None
    heartbeat_period_s: float = Field(default=10.0, gt=0)
    policy: str = "progress"
    #: a reservation left this long by a controller that died is finished by a retry
    stale_after_s: float = Field(default=60.0, gt=0)
    #: timeout of each call to an agent
    agent_timeout_s: float = Field(default=30.0, gt=0)
    admin_token: str | None = Field(default=None, min_length=16)
    agent_token: str | None = Field(default=None, min_length=16)
    #: CIDRs whose clients may use SlackVM's /deploy and /remove without a token
    slackvm_open_networks: tuple[str, ...] = ()

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        if value not in POLICIES:
            raise ValueError(f"one of {', '.join(POLICIES)}")
        return value

    @field_validator("slackvm_open_networks")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for network in value:
            ipaddress.ip_network(network, strict=False)
        return value

    @model_validator(mode="after")
    def _reservations_outlive_agent_calls(self) -> ControllerConfig:
        if self.stale_after_s <= self.agent_timeout_s:
            raise ValueError("stale_after_s must be longer than agent_timeout_s (a live call's reservation)")
        return self

    @property
    def url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'controller.db'}"

    def tokens(self) -> tuple[str, str]:
        """(admin, agent) tokens: configured, or created on first start in the
        data directory (`admin.token`, `agent.token`, mode 0600)."""
        admin = self.admin_token or token_in(self.data_dir / "admin.token")
        agent = self.agent_token or token_in(self.data_dir / "agent.token")
        return admin, agent


def load_controller_config(
    path: Path | None, flags: dict[str, Any], environ: dict[str, str] | None = None
) -> ControllerConfig:
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values.update(tomllib.loads(path.read_text(encoding="utf-8")))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ControllerConfigError(f"{path}: {exc}") from None
    environ = dict(os.environ if environ is None else environ)
    for key in ControllerConfig.model_fields:
        if ENV_PREFIX + key.upper() in environ:
            values[key] = environ[ENV_PREFIX + key.upper()]
    values.update({key: value for key, value in flags.items() if value is not None})
    if isinstance(values.get("slackvm_open_networks"), str):
        values["slackvm_open_networks"] = [
            p.strip() for p in values["slackvm_open_networks"].split(",") if p.strip()
        ]
    try:
        return ControllerConfig(**values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ControllerConfigError(f"controller settings: {problems}") from None
