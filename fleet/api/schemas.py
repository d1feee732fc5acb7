"""Response models: what the API promises, and what /docs shows."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fleet.commands import DEFAULT_TTL_S, MAX_TTL_S
from kits.contract import TICKET_ID_RE, Id


HealthStatus = Literal["ok", "unknown", "degraded", "silent", "offline"]


class ReasonOut(BaseModel):
    code: str = Field(description="e.g. paper_out, battery_low, bms_protection, sequence_gaps, config_behind")
    severity: Literal["fault", "warning"]
    what: str


class DeviceHealthOut(BaseModel):
    status: HealthStatus = Field(description="ok < unknown < degraded < silent < offline (worst last). silent: "
                                 "online by its state, but nothing arrived within heartbeat_timeout_s")
    reasons: list[ReasonOut] = Field(description="why degraded (also listed when offline or silent)")
    last_seen_ms: int | None = Field(description="when the fleet last received anything from it (fleet clock)")
    since_seen_s: float | None
    heartbeat_timeout_s: float
    fw: str | None
    gaps: int = Field(description="sequence numbers never received, all boots")
    gaps_this_boot: int
    rejected: int = Field(description="messages on its topics rejected within rejected_window_s")
    rejected_window_s: float


class BatteryForecastOut(BaseModel):
    device_id: str
    ts: int | None = Field(description="time of the latest reading (device clock)")
    soc: float | None
    v: float | None
    i: float | None = Field(description="A; negative = discharging")
    p: float | None = Field(description="W; v*i when the monitor reports no power")
    hours_left: float | None = Field(description="time to empty at the recent discharge rate")
    method: Literal["remaining_ah", "soc_slope"] | None = Field(
        description="remaining_ah: BMS charge left / average discharge current; soc_slope: fitted SOC trend")
    reason: str | None = Field(description="why there is no forecast (charging, too few readings, ...)")
    points: int = Field(description="readings of the latest discharge segment used")
    span_s: float
    discharge_a: float | None
    soc_slope_pct_h: float | None
    empty_at_ms: int | None
    device_ttg_min: int | None = Field(description="the device's own time-to-go as sent (-1: infinite)")
    device_ttg_h: float | None
    event_ends_ms: int | None = Field(description="the kit's event end (manifest [event].ends)")
    event_ended: bool
    lasts_until_end: bool | None
    margin_min: float | None = Field(description="empty_at - event end, minutes; negative: short by that much")


ClockStateOut = Literal["synced", "kit", "unset"]


class DeviceUpdateStateOut(BaseModel):
    """The device's update in its latest rollout (fleet/updates/; docs/updates.md, "Rollouts")."""

    state: Literal["pending", "waiting", "offered", "downloading", "trial", "committed", "rolled_back", "failed"]
    why: str | None = Field(description="why it waits, or what the device or its kit's agent reported")
    fw: str = Field(description="the release's fw: what the device reports once it runs it")
    rollout: int
    release: str
    updated_ms: int


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
    health: DeviceHealthOut | None = None
    clock: ClockStateOut | None = Field(default=None, description="where its time comes from, from its state: "
                                        "synced (internet, or the kit's synced Pi), kit (the Pi's last known time), "
                                        "unset (none since boot); null: it does not say (an agent-driven device, "
                                        "older firmware)")
    reset_cause: Literal["power", "watchdog", "reset", "soft", "other"] | None = Field(
        default=None, description="why it last booted, from its state")
    clock_since_ms: int | None = Field(default=None, description="when the fleet learnt this clock state, this boot "
                                       "(fleet clock)")
    clock_lag_ms: int | None = Field(default=None, description="the least late of its recent messages (received - "
                                     "ts, ms): about how far its clock is behind the fleet's (negative: ahead)")
    update: DeviceUpdateStateOut | None = Field(default=None, description="its update in its latest rollout; "
                                                "null: never in one")


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
    battery_forecast: BatteryForecastOut | None = None


class KitHealthOut(BaseModel):
    status: HealthStatus = Field(description="the worst of its devices")
    counts: dict[str, int] = Field(description="devices per status")


class ReadinessProblemOut(BaseModel):
    device: str
    severity: str
    what: str
    fix: str


class ReadinessOut(BaseModel):
    device_id: str = Field(description="the agent that reported")
    ts: int | None = Field(description="when the self-test reported (device clock)")
    status: Literal["ready", "degraded", "not_ready"] | None
    problems: list[ReadinessProblemOut]
    took_ms: int | None


class EventWindowOut(BaseModel):
    doors_open_ms: int | None
    ends_ms: int


class KitOut(BaseModel):
    id: str
    name: str
    devices_online: int
    devices_total: int
    battery: dict[str, Any] | None = Field(description="latest reading of the kit's power bank")
    devices: list[DeviceOut]
    health: KitHealthOut | None = None
    readiness: ReadinessOut | None = Field(default=None, description="the agent's last power-up self-test")
    event: EventWindowOut | None = Field(default=None, description="from the manifest this fleet process loaded")
    batteries: list[BatteryForecastOut] = Field(default_factory=list, description="per power bank: reading and forecast")
    computed_ms: int | None = Field(default=None, description="when this view was computed (fleet clock): "
                                    "at most view_refresh_s ago, or since the last change this process saw")


class DeviceChipOut(BaseModel):
    id: str
    role: str
    model: str
    online: bool
    status: HealthStatus | None = Field(description="its health")
    last_seen_ms: int | None
    clock: ClockStateOut | None = Field(default=None, description="synced | kit | unset, from its state")


class KitSummaryOut(BaseModel):
    """A kit as the overview lists it: KitOut without the devices' details."""

    id: str
    name: str
    state: Literal["online", "degraded", "offline"] = Field(description="every device online, some, or none")
    devices_online: int
    devices_total: int
    battery: dict[str, Any] | None = Field(description="latest reading of the kit's power bank")
    health: KitHealthOut | None
    readiness: ReadinessOut | None
    event: EventWindowOut | None
    batteries: list[BatteryForecastOut]
    devices: list[DeviceChipOut]
    computed_ms: int | None


class FleetCountsOut(BaseModel):
    state: dict[str, int] = Field(description="kits per connectivity state (the whole fleet, before filters)")
    status: dict[str, int] = Field(description="kits per health status (the whole fleet, before filters)")


class KitPageOut(BaseModel):
    items: list[KitSummaryOut]
    total: int = Field(description="kits matching the filters")
    offset: int
    limit: int
    next_offset: int | None = Field(description="pass as ?offset= for the next page; null on the last")
    fleet: FleetCountsOut
    computed_ms: int | None = Field(description="the oldest view on this page was computed then (fleet clock)")


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


class RevocationOut(BaseModel):
    ticket: str
    revoked_by: str = Field(description="who: the fleet user, or the person the kit's Pi named")
    revoked_at: str = Field(description="where: \"fleet\", or \"kit <kit>/<agent>\" (revoked at the kit, "
                            "perhaps with no uplink)")
    revoked_ms: int = Field(description="when, ms since the epoch")


class AttendanceOut(BaseModel):
    event_id: str
    scans: int
    admitted: int = Field(description="distinct tickets admitted")
    by_verdict: dict[str, int]
    by_scanner: dict[str, dict[str, int]]
    double_entries: list[DoubleEntryOut]
    revocations: list[RevocationOut] = Field(default_factory=list, description="tickets revoked for the event, "
                                             "with who revoked each and where")


# ---------------------------------------------------------------- pushing to devices

class CommandIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$", description="what the device should do, e.g. identify")
    args: dict[str, Any] = Field(default_factory=dict)
    ttl_s: int = Field(default=DEFAULT_TTL_S, ge=1, le=MAX_TTL_S,
                       description="seconds until the command expires; a device never runs it after that")
    by: str = Field(default="api", min_length=1, max_length=63, deprecated=True,
                    description="ignored: the audit log records the signed-in user as who asked")


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
    requested_by: str | None = Field(default=None, description="who asked for it")


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


class EventKeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(pattern=r"^[0-9a-fA-F]{64}$", description="the event's HMAC-SHA256 ticket key, hex "
                     "(the key file's \"key\")")
    not_before: int = Field(ge=0, le=253402300799, description="Unix s: the scanners verify its tickets from then")
    expires: int = Field(ge=0, le=253402300799, description="Unix s: the scanners drop the key then (the event's end "
                         "plus a margin); must be in the future")
    kits: list[Id] | None = Field(
        default=None, description="the kits whose scanners get it (default: every kit)")


class EventKeyPushedOut(BaseModel):
    device_id: str
    version: int


class EventKeyOut(BaseModel):
    event_id: str
    not_before: int
    expires: int
    kits: list[str] | None
    pushed: list[EventKeyPushedOut] = Field(description="scanners whose desired config changed, and its version")


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


class CheckinOut(BaseModel):
    device_id: str
    scan_ms: int = Field(description="when the ticket was scanned (not when the check-in arrived)")
    event_id: str | None
    ticket: str | None
    tier: str | None
    verdict: str
    hub_checked: bool
    received_ms: int | None = Field(default=None, description="when the fleet stored it (null: before this was kept)")
    historical: bool = Field(default=False, description="held by the kit through an uplink outage: received "
                             "over a minute after the scan")


class AuditOut(BaseModel):
    ts: int = Field(description="when, ms since the epoch")
    by: str | None = Field(description="who (null: a command sent before the fleet recorded it)")
    what: str = Field(description="command <action> | alert acknowledged | alert resolved | "
                      "<METHOD> <route> (any other change made through the API)")
    target: str = Field(description="the device (or kit) it was about; for another change, the path changed")
    ref: str = Field(description="the command's or the alert's id; \"request N\" for another change")
    result: str


# ---------------------------------------------------------------- refusals

# The largest integer the database holds (SQLite and PostgreSQL BIGINT): ids, cursors and times past it
# are refused with 422 (they would not even reach the query).
DB_INT_MAX = 2**63 - 1


class ErrorOut(BaseModel):
    """A refusal: ``detail`` says why."""

    detail: str


class FieldErrorOut(BaseModel):
    loc: list[str | int] = Field(description='where: ["body", "outputs", 0, "controller"], ["query", "at"], ...')
    msg: str
    type: str


class InvalidOut(BaseModel):
    """A 422: the request's fields refused, each with where and why (FastAPI's, and the routes' own
    checks in the same shape), or, from a route that checks what no model can, a message."""

    detail: list[FieldErrorOut] | str


def refusals(codes: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for what a route itself refuses with: each status code and what it means. (A 422
    given here replaces FastAPI's own in the schema: its body may be either shape.)"""
    return {code: {"model": InvalidOut if code == 422 else ErrorOut, "description": what}
            for code, what in codes.items()}


# Routes with a JSON body: a body that cannot be read at all (not UTF-8) is 400 (FastAPI's).
BAD_BODY = {400: "the body could not be read (not UTF-8 JSON)"}
# Routes that publish to devices (fleet/commands/): no broker connection in this process, or it failed.
NO_BROKER = {503: "not published: this fleet process has no broker connection, or the publish failed"}
