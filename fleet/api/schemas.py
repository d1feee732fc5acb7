"""Response models: what the API promises, and what /docs shows."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fleet.commands import DEFAULT_TTL_S, MAX_TTL_S
from kits.contract import TICKET_ID_RE


class DeviceOut(BaseModel):
    id: str
    kit_id: str
    role: str
    model: str
    host_id: str | None = Field(description="the agent that drives this device; offline when it is")
    online: bool
    boot: str | None
    fw: str | None
    config_version: int | None
    last_seen_ms: int | None
    received: int
    duplicates: int
    latest: dict[str, dict[str, Any]] = Field(description="latest telemetry per kind (battery, printer, device)")


class StreamOut(BaseModel):
    boot: str
    max_seq: int
    received: int
    missing: int = Field(description="sequence numbers never received in this boot (gaps)")
    first_ms: int
    last_ms: int


class DeviceDetailOut(DeviceOut):
    streams: list[StreamOut]
    missing: int


class KitOut(BaseModel):
    id: str
    name: str
    devices_online: int
    devices_total: int
    battery: dict[str, Any] | None = Field(description="latest reading of the kit's power bank")
    devices: list[DeviceOut]


class TelemetryOut(BaseModel):
    device_id: str
    items: list[dict[str, Any]]
    next_since: int | None = Field(description="pass as ?since= to continue; null when there is no more")


class ScanOut(BaseModel):
    device_id: str
    scan_ms: int = Field(description="when the ticket was scanned (device clock), ms since the epoch")
    hub_checked: bool = Field(description="false: admitted while the kit's hub was unreachable")


class DoubleEntryOut(BaseModel):
    ticket: str
    scans: list[ScanOut]


class AttendanceOut(BaseModel):
    event_id: str
    scans: int
    admitted: int = Field(description="distinct tickets admitted")
    by_verdict: dict[str, int]
    by_scanner: dict[str, dict[str, int]]
    double_entries: list[DoubleEntryOut]


# ---------------------------------------------------------------- pushing to devices

class CommandIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$", description="what the device should do, e.g. identify")
    args: dict[str, Any] = Field(default_factory=dict)
    ttl_s: int = Field(default=DEFAULT_TTL_S, ge=1, le=MAX_TTL_S,
                       description="seconds until the command expires; a device never runs it after that")


class CommandOut(BaseModel):
    id: str
    device_id: str
    action: str
    args: dict[str, Any]
    ts: int = Field(description="when the fleet issued it, ms since the epoch")
    expires: int = Field(description="ms since the epoch; never executed after this")
    status: Literal["pending", "ok", "error", "expired", "rejected"] = Field(
        description="pending until the device's ack; expired also when no ack came before expires")
    detail: str | None
    acked_ms: int | None = Field(description="the ack's time (device clock), ms since the epoch")


class ConfigIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: dict[str, Any]


class ConfigOut(BaseModel):
    version: int = Field(description="per device, one more than any before it; never reused")
    ts: int
    data: dict[str, Any]


class DesiredConfigOut(BaseModel):
    device_id: str
    version: int | None = Field(description="the desired version; null when none was ever pushed")
    ts: int | None
    data: dict[str, Any] | None
    applied_version: int | None = Field(description="config_version the device reports in its state")
    in_sync: bool = Field(description="the device reports the desired version (true when nothing is desired)")


class RevocationsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tickets: list[Annotated[str, Field(pattern=f"^{TICKET_ID_RE}$")]] = Field(min_length=1, max_length=1000)


class PushedOut(BaseModel):
    device_id: str
    version: int
    revoked: list[str] = Field(description="the event's revoked tickets now desired on this scanner")


class RevocationsOut(BaseModel):
    event_id: str
    tickets: list[str] = Field(description="the tickets this call revoked")
    pushed: list[PushedOut]
