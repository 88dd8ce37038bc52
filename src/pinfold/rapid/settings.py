"""The `[rapid]` table of the agent's TOML file: defined with the agent's
configuration (`pinfold.agent.rapid_settings`), which reads it."""

from __future__ import annotations

from pinfold.agent.rapid_settings import RapidSettings

__all__ = ["RapidSettings"]
