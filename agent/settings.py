"""Agent settings: command-line flags override POPKIT_* environment variables override defaults."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class AgentSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="POPKIT_", extra="ignore")

    mqtt_url: str = Field(default="mqtt://127.0.0.1:1883", description="the kit's broker (or the fleet's)")
    agent_data: Path = Field(default=Path("var/agent"), description="folder for the outbox")
    outbox_cap: int = Field(default=50_000, ge=100, description="entries before oldest telemetry is dropped")
    resend_after_s: float = Field(default=15.0, gt=0, description="resend a message whose receipt is this late")
