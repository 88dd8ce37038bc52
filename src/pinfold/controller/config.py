"""The controller's settings: defaults, then a TOML file, then
PINFOLD_CONTROLLER_* environment variables, then flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from pinfold.model.defaults import (
    ACTION_TIMEOUT_S,
    AGENT_TIMEOUT_S,
    COALESCE_AT_MOST,
    CONTROLLER_PORT,
    DATABASE_POOL_SIZE,
    DEFAULT_POLICY,
    HEARTBEAT_PERIOD_S,
    STALE_AFTER_S,
)
from pinfold.model.vm import MAX_BULK
from pinfold.placement import POLICIES
from pinfold.serving import HttpSettings
from pinfold.settings import Networks, SettingsError, describe, environment, layered
from pinfold.tokens import token_in

__all__ = ["ControllerConfig", "ControllerConfigError", "load_controller_config"]

ENV_PREFIX = "PINFOLD_CONTROLLER_"


class ControllerConfigError(ValueError):
    """A setting that is missing, unknown or malformed; says which and where."""


class ControllerConfig(HttpSettings):
    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: Path = Path.home() / ".local" / "share" / "pinfold" / "controller"
    listen: str = "127.0.0.1"
    port: int = Field(default=CONTROLLER_PORT, ge=1, le=65535)
    #: SQLAlchemy URL; default: a SQLite file in the data directory
    database_url: str | None = None
    #: connections to the database kept open, and as many more under load
    database_pool_size: int = Field(default=DATABASE_POOL_SIZE, ge=1, le=500)
    heartbeat_period_s: float = Field(default=HEARTBEAT_PERIOD_S, gt=0)
    policy: str = DEFAULT_POLICY
    #: a reservation left this long by a controller that died is finished by a retry
    stale_after_s: float = Field(default=STALE_AFTER_S, gt=0)
    #: timeout of each call to an agent
    agent_timeout_s: float = Field(default=AGENT_TIMEOUT_S, gt=0)
    #: timeout of a lifecycle action (start, shutdown, ...): longer than the agents'
    #: shutdown_timeout_s, after which they force the guest off
    agent_action_timeout_s: float = Field(default=ACTION_TIMEOUT_S, gt=0)
    #: creates (and deletes) that arrive while others are under way are placed together,
    #: this many at most in one pass (docs/controller.md, "Single creates under load"); 1: each alone
    coalesce_at_most: int = Field(default=COALESCE_AT_MOST, ge=1, le=MAX_BULK)
    admin_token: str | None = Field(default=None, min_length=16)
    agent_token: str | None = Field(default=None, min_length=16)
    #: CIDRs whose clients may use SlackVM's /deploy and /remove without a token
    slackvm_open_networks: Networks = ()
    #: heartbeats of big hosts (hundreds of VMs, each with its pins) outgrow the
    #: agents' 1 MiB; still far below a body that would tie up the controller
    max_body_bytes: int = Field(default=4 << 20, ge=1024)
    #: the consolidation policy (docs/controller.md): off by default; when on, every
    #: interval it plans live migrations that empty lightly used hosts, at most
    #: `consolidate_at_once` in flight, `consolidate_per_hour` started an hour, and
    #: none of a VM moved less than `consolidate_cooldown_s` ago
    consolidate: bool = False
    consolidate_interval_s: float = Field(default=300.0, gt=0)
    consolidate_at_once: int = Field(default=2, ge=1)
    consolidate_per_hour: int = Field(default=20, ge=1)
    consolidate_cooldown_s: float = Field(default=3600.0, ge=0)

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        if value not in POLICIES:
            raise ValueError(f"one of {', '.join(POLICIES)}")
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
    environ = environment(environ)
    try:
        values = layered(
            path, flags, environ, ENV_PREFIX, ControllerConfig.model_fields, ("slackvm_open_networks",)
        )
    except SettingsError as exc:
        raise ControllerConfigError(str(exc)) from None
    try:
        return ControllerConfig(**values)
    except ValidationError as exc:
        raise ControllerConfigError(f"controller settings: {describe(exc)}") from None
