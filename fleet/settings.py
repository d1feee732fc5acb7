"""Fleet settings: command-line flags override POPKIT_* environment variables override defaults."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class FleetSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="POPKIT_", extra="ignore")

    mqtt_url: str = Field(default="mqtt://127.0.0.1:1883", description="broker the fleet ingests from")
    db_url: str = Field(default="sqlite:///var/fleet.db", description="SQLAlchemy URL: sqlite:///... or postgresql://...")
    http: str = Field(default="127.0.0.1:8000", description="HOST:PORT the API and page listen on")
    # 3.1.1 by default: paho decodes a v5 PUBLISH ~30% slower (a Properties object per message),
    # the biggest cost of ingest. 3.1.1 has no Receive Maximum, so the broker's in-flight window
    # must be large (Mosquitto: max_inflight_messages 0, as popkit.broker configures it);
    # "5" negotiates the window instead. A ?protocol= in mqtt_url wins over this.
    mqtt_protocol: Literal["5", "3.1.1"] = "3.1.1"
    client_id: str = Field(default="popkit-fleet-1", description="MQTT client id: its persistent session survives restarts")
    # Workers sharing a group split the stream (MQTT shared subscription); empty = plain subscription.
    share_group: str = ""
    batch_max: int = Field(default=1000, ge=1, le=20_000)
    batch_wait_ms: int = Field(default=20, ge=0, le=5000, description="longest a message waits for its batch")
    receive_maximum: int = Field(default=4000, ge=1, le=65535, description="QoS 1 messages in flight to us (MQTT v5)")
    dead_letter_cap: int = Field(default=10_000, ge=100)
    kits: list[str] = Field(default_factory=list, description="kit manifests to register at start")

    @property
    def http_host(self) -> str:
        return self.http.rsplit(":", 1)[0]

    @property
    def http_port(self) -> int:
        return int(self.http.rsplit(":", 1)[1])
