"""Response models: what the API promises, and what /docs shows."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


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
