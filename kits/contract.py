"""The PopKit wire contract: the one place that says what travels over MQTT.

Agent, fleet and simulators import these models; the firmware side gets the
JSON Schema exported from them (``python -m kits.contract export docs/protocol``).

Topic tree: ``popkit/v1/<kit>/<device>/<channel>``, one tree per device so the
broker's ACL can pin a device to its own tree.

Delivery rules that shape the fields below:

* Every device message carries ``boot`` (random id per boot), ``seq`` (per
  boot, starting at 1) and ``ts`` (milliseconds since the Unix epoch, the time
  the thing happened, not the send time). The fleet deduplicates by
  (device, boot, seq) and detects gaps in ``seq``.
* ``state`` is retained and latest-wins, so it is not part of the sequence:
  its ``seq`` is 0 and its ``ts`` is the time the MQTT session began (the same
  for the birth and the Last Will, so the fleet can tell an old session's Will
  from the current session's birth).
* ``receipt`` is the fleet's end-to-end acknowledgement: a producer removes a
  message from its outbox only when a receipt names it.
* ``popkit/v1/<kit>/time`` is the kit's clock (:class:`KitTime`): the kit's Pi publishes it,
  QoS 0 and never retained (a stale time must never be delivered), every 10 s and at once on a
  device's birth. It is a kit-level topic, outside every device tree: the bridge never forwards
  it and the fleet never subscribes to it. A device without internet time sets its clock from it
  and says where its time came from in ``state.clock``.
* ``popkit/v1/<kit>/revocations`` is the kit's own ticket list (:class:`KitRevocations`), retained
  at the kit broker, written by the kit's agent alone: what was revoked at the kit (perhaps with no
  uplink) and the event keys the kit holds. Its scanners refuse what it, their config or their
  flashed file revokes: the union. Requests to add to it come on ``popkit/v1/<kit>/revoke``
  (:class:`RevocationData`). Kit-level like the time: never bridged; the fleet learns the kit's
  revocations from the agent's ``revocation`` events.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from pydantic_core import from_json

ROOT = "popkit/v1"
CHANNELS = ("state", "telemetry", "event", "cmd", "ack", "config", "receipt", "claim", "claimed", "update",
            "till", "tilled")
# Channels a device publishes; the fleet subscribes to exactly these.
DEVICE_CHANNELS = ("state", "telemetry", "event", "ack")
# The door's question to the kit's hub and the hub's answer (QoS 0, never retained, never stored:
# the check-in event that follows is the record). They stay inside the kit.
HUB_CHANNELS = ("claim", "claimed")
# A scanner in till mode to the kit's till (the agent), and the till's answer: a product label
# scanned, to add to the open order of the scanner's till station (QoS 0, never retained, never
# stored: the order is the record, made on the agent). They stay inside the kit.
TILL_CHANNELS = ("till", "tilled")
# The kit's agent to one ESP32: the release it should run, served from the kit's cache (retained at
# the kit broker, never bridged: the fleet tells the agent, the agent tells its devices).
UPDATE_CHANNEL = "update"
# Channels that carry a sequence number and go through a producer's outbox.
LEDGER_CHANNELS = ("telemetry", "event", "ack")
# The kit's clock, published by the kit's agent for its ESP32s: popkit/v1/<kit>/time (not a device tree).
TIME_CHANNEL = "time"
# The kit's own ticket list, published retained by the kit's agent for its scanners:
# popkit/v1/<kit>/revocations (not a device tree, never bridged); and the requests to add to it
# (`popkit tickets revoke --kit` on the kit's Pi): popkit/v1/<kit>/revoke.
REVOCATIONS_CHANNEL = "revocations"
REVOKE_CHANNEL = "revoke"

MAX_DEVICE_PAYLOAD = 4096  # bytes; an ESP32 builds these in a few hundred
MAX_CONFIG_PAYLOAD = 65536  # compiled lighting timelines are the largest

# Kit and device ids go into topics and ACL patterns: no '/', '+', '#' or '$'.
ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
_ID_RE = re.compile(ID_PATTERN)
BOOT_PATTERN = r"^[0-9a-f]{4,32}$"

Id = Annotated[str, Field(pattern=ID_PATTERN)]
BootId = Annotated[str, Field(pattern=BOOT_PATTERN)]
EpochMs = Annotated[int, Field(ge=0, lt=2**53)]
Seq = Annotated[int, Field(ge=0, lt=2**53)]

Role = Literal["agent", "scanner", "lighting", "powerbank", "printer", "light", "panel"]


class ContractError(ValueError):
    """A message that does not fit the contract. ``reason`` is a short metric label."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# ---------------------------------------------------------------- topics

def is_valid_id(value: str) -> bool:
    return bool(_ID_RE.match(value))


def topic(kit: str, device: str, channel: str) -> str:
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}")
    if not (is_valid_id(kit) and is_valid_id(device)):
        raise ValueError(f"invalid kit or device id: {kit!r}, {device!r}")
    return f"{ROOT}/{kit}/{device}/{channel}"


def parse_topic(name: str) -> tuple[str, str, str]:
    """Split a topic into (kit, device, channel) or raise ContractError('unknown_topic')."""
    parts = name.split("/")
    if len(parts) != 5 or f"{parts[0]}/{parts[1]}" != ROOT:
        raise ContractError("unknown_topic", f"not under {ROOT}/<kit>/<device>/<channel>: {name[:120]!r}")
    kit, device, channel = parts[2], parts[3], parts[4]
    if channel not in CHANNELS:
        raise ContractError("unknown_topic", f"unknown channel {channel!r} in {name[:120]!r}")
    if not (is_valid_id(kit) and is_valid_id(device)):
        raise ContractError("unknown_topic", f"invalid kit or device id in {name[:120]!r}")
    return kit, device, channel


def subscription(channel: str, kit: str = "+", device: str = "+") -> str:
    return f"{ROOT}/{kit}/{device}/{channel}"


def kit_topic(kit: str, name: str) -> str:
    """A kit-level topic, ``popkit/v1/<kit>/<name>``, beside the device trees."""
    if not is_valid_id(kit):
        raise ValueError(f"invalid kit id: {kit!r}")
    return f"{ROOT}/{kit}/{name}"


def time_topic(kit: str) -> str:
    """The kit's clock topic, ``popkit/v1/<kit>/time``: one per kit, beside the device trees."""
    if not is_valid_id(kit):
        raise ValueError(f"invalid kit id: {kit!r}")
    return f"{ROOT}/{kit}/{TIME_CHANNEL}"


# ---------------------------------------------------------------- payloads

class _Model(BaseModel):
    # Unknown fields are refused: a typo on a device must show up, not vanish. A number too big for
    # a float (1e400) would be stored as infinity and re-encoded as null: refused too.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Envelope(_Model):
    boot: BootId
    seq: Seq
    ts: EpochMs


ClockState = Literal["synced", "kit", "unset"]
ResetCause = Literal["power", "watchdog", "reset", "soft", "other"]


UpdateState = Literal["downloading", "trial", "committed", "rolled_back", "safe_mode", "failed"]


class UpdateReport(_Model):
    """What a device has to say about its A/B slots (docs/updates.md): a release on trial, the
    outcome of its last switch, or safe mode after a boot loop. ``why``: the reason of a rollback
    or a failure, or what was committed; ``fw``: the fw of the slot concerned, when not ``State.fw``."""

    state: UpdateState
    why: str | None = Field(default=None, max_length=120)
    fw: str | None = Field(default=None, max_length=40)


class State(Envelope):
    """Retained device state: birth on connect, death as the Last Will.

    ``clock``: where the device's time comes from. ``synced``: internet NTP, or the kit's time
    while the kit's Pi is itself synced (NTP or its RTC); ``kit``: the kit's time while the Pi runs
    on its last known time; ``unset``: no time since boot, so ``ts`` here and in its messages means
    nothing. A device publishes its state again when its clock changes. Absent: an older device."""

    online: bool
    role: Role
    fw: str | None = Field(default=None, max_length=40)
    reason: Literal["birth", "lwt", "shutdown"] = "birth"
    config_version: int | None = Field(default=None, ge=0)
    clock: ClockState | None = None
    reset_cause: ResetCause | None = Field(default=None, description="why the device last (re)booted")
    update: UpdateReport | None = Field(default=None, description="the A/B update's news; absent when "
                                        "there is none (and from the agent and older devices)")


class BatteryTelemetry(Envelope):
    kind: Literal["battery"] = "battery"
    source: Literal["vedirect", "jbd", "sim"]
    v: float = Field(description="battery voltage, V")
    i: float = Field(description="battery current, A; negative = discharging")
    p: float | None = Field(default=None, description="power, W")
    soc: float | None = Field(default=None, ge=0, le=100, description="state of charge, %")
    ttg: int | None = Field(default=None, description="device's time-to-go estimate, minutes; -1 = infinite")
    alarm: str | None = Field(default=None, max_length=40)
    # From a BMS (JBD): what a shunt does not know.
    remaining_ah: float | None = Field(default=None, ge=0, description="remaining capacity, Ah")
    capacity_ah: float | None = Field(default=None, ge=0, description="full (nominal) capacity, Ah")
    cycles: int | None = Field(default=None, ge=0)
    temps_c: list[float] | None = Field(default=None, max_length=8, description="NTC temperatures, °C")
    protection: list[Annotated[str, Field(max_length=32)]] | None = Field(
        default=None, max_length=16, description="active protection flags, e.g. cell_overvoltage")


class PrinterTelemetry(Envelope):
    kind: Literal["printer"] = "printer"
    online: bool
    paper: Literal["ok", "near_end", "out", "unknown"]
    cover_open: bool = False
    error: bool = False


class LightTelemetry(Envelope):
    """A light the agent drives: a relay channel (on/off) or a BLE lamp (level and colour)."""

    kind: Literal["light"] = "light"
    reachable: bool = True
    on: bool
    level: int | None = Field(default=None, ge=0, le=255)
    rgb: tuple[int, int, int] | None = None
    scene: str | None = Field(default=None, max_length=40, description="the scene shown: its venue timeline's, "
                              "or 'manual' after a command set the light by hand (as a lighting controller's)")


class KitReadiness(_Model):
    """``data`` of a ``readiness`` event: the verdict of a kit's power-up self-test, for crew and ops."""

    status: Literal["ready", "degraded", "not_ready"]
    problems: list["ReadinessProblem"] = Field(default_factory=list, max_length=64)
    took_ms: int | None = Field(default=None, ge=0)


class KitSummary(_Model):
    """``data`` of a ``summary`` event: what a kit did between its last two ``popkit kit down``."""

    since: EpochMs
    checkins: int = Field(ge=0, description="tickets admitted at the kit's doors")
    checkins_by_door: dict[str, int] = Field(default_factory=dict)
    labels_printed: int = Field(ge=0)
    print_failed: int = Field(default=0, ge=0)
    print_queued: int = Field(default=0, ge=0, description="still waiting for a printer")
    energy_wh: dict[str, float] = Field(default_factory=dict, description="Wh drawn, per pack")


class ReadinessProblem(_Model):
    device: Id
    severity: Literal["fault", "warning"] = Field(description="fault: not ready; warning: degraded")
    what: str = Field(max_length=120)
    fix: str = Field(max_length=160)


class DeviceTelemetry(Envelope):
    """Health of the device itself (agent, scanner, lighting controller)."""

    kind: Literal["device"] = "device"
    uptime_s: int = Field(ge=0)
    heap_free: int | None = Field(default=None, ge=0)
    rssi: int | None = None
    outbox: int | None = Field(default=None, ge=0, description="messages waiting for a receipt")
    dropped: int | None = Field(default=None, ge=0, description="telemetry dropped oldest-first since boot")
    scene: str | None = Field(default=None, max_length=40)
    scans: int | None = Field(default=None, ge=0)
    clock_refused: int | None = Field(default=None, ge=0, description="kit time messages refused since boot "
                                      "(a jump backwards, or far ahead of a clock already set)")
    # The kit's till (agent only): orders and refunds the fleet has not receipted yet, and the oldest
    # one's ts, so the fleet can alert on a kit sitting on sales (Square's 24 h rule). Absent: no till.
    orders_pending: int | None = Field(default=None, ge=0, description="till orders/refunds not yet receipted")
    orders_oldest_ms: EpochMs | None = Field(default=None, description="ts of the oldest of orders_pending")


Telemetry = Annotated[Union[BatteryTelemetry, PrinterTelemetry, LightTelemetry, DeviceTelemetry],
                      Field(discriminator="kind")]


Verdict = Literal[
    "admitted", "already_admitted", "wrong_event", "not_yet_valid", "expired", "bad_signature", "revoked", "malformed"
]


# Ticket fields are upper case: QR alphanumeric mode has no lower case (docs/tickets.md).
EVENT_ID_RE = r"[A-Z0-9][A-Z0-9-]{0,15}"
TICKET_ID_RE = r"[A-Z0-9]{1,16}"
TIER_RE = r"[A-Z0-9]{1,8}"
EventId = Annotated[str, Field(pattern=f"^{EVENT_ID_RE}$")]
TicketId = Annotated[str, Field(pattern=f"^{TICKET_ID_RE}$")]


class Checkin(_Model):
    """``data`` of a ``checkin`` event: one scan at the door and the scanner's verdict."""

    event: EventId | None = Field(default=None, description="the ticket's event; null when the payload could not be read")
    ticket: TicketId | None = None
    tier: Annotated[str, Field(pattern=f"^{TIER_RE}$")] | None = None
    verdict: Verdict
    # False: the kit's hub was unreachable, so another scanner may have admitted the same
    # ticket; the fleet's attendance reconciles and flags it.
    hub_checked: bool = True
    # already_admitted on the hub's word: the door that admitted the ticket first.
    first_device: Id | None = None
    # "unset": the scanner had no trusted time when it scanned, so it checked signature and event
    # only (not the ticket's validity window), and this check-in's ts is its own uncorrected clock.
    clock: Literal["unset"] | None = None


class RevocationData(_Model):
    """``data`` of a ``revocation`` event (the kit's agent: tickets revoked at the kit, for the fleet to
    keep in its union), and the body of a request on ``popkit/v1/<kit>/revoke``."""

    event: EventId
    tickets: list[TicketId] = Field(min_length=1, max_length=100)
    by: str = Field(min_length=1, max_length=63, description="who revoked them, as the kit's Pi knew them")


EVENT_DATA_MODELS: dict[str, Any] = {"checkin": Checkin, "readiness": KitReadiness, "summary": KitSummary,
                                     "revocation": RevocationData}


class Event(Envelope):
    """A discrete happening: check-in, print done, fault. ``checkin`` data follows :class:`Checkin`."""

    kind: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
    data: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _typed_data(self) -> "Event":
        if self.kind in EVENT_DATA_MODELS:
            try:
                EVENT_DATA_MODELS[self.kind].model_validate(self.data)
            except ValidationError as exc:
                # Raised as it is, its errors would name "verdict" where the device must fix "data.verdict".
                raise ValidationError.from_exception_data(exc.title, [
                    {**e, "loc": ("data", *e["loc"])} for e in exc.errors(include_url=False)]) from None
        return self


class Command(_Model):
    """Fleet to device. Never executed past ``expires``; never retained."""

    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    ts: EpochMs
    expires: EpochMs
    action: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
    args: dict[str, Any] = Field(default_factory=dict)


class Ack(Envelope):
    """The device's answer to a command."""

    cmd_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    status: Literal["ok", "error", "expired", "rejected"]
    detail: str | None = Field(default=None, max_length=200)


class Config(_Model):
    """Retained desired config; the device reports the version it applied in its state."""

    version: int = Field(ge=0)
    ts: EpochMs
    data: dict[str, Any] = Field(default_factory=dict)


# Ranges in one receipt's ``seqs`` (and in its ``missing``): the firmware decodes a receipt whole on a
# 64 KB heap, and a batch of a device's messages split between shared-subscription workers comes
# as every other seq (300 single-seq ranges ran past MAX_DEVICE_PAYLOAD). More go in more receipts.
RECEIPT_MAX_RANGES = 32


class Receipt(_Model):
    """Fleet to producer: these (boot, seq) ranges are committed, drop them from the outbox;
    and (``missing``) these never arrived, send them again now."""

    boot: BootId
    seqs: list[tuple[Seq, Seq]] = Field(max_length=RECEIPT_MAX_RANGES, description="inclusive [first, last] ranges")
    ts: EpochMs
    # A silent gap (later seqs arrived, these never did) is asked for again here, so the producer
    # resends them at once instead of when their receipt is overdue. Empty in an ordinary receipt.
    missing: list[tuple[Seq, Seq]] = Field(default_factory=list, max_length=RECEIPT_MAX_RANGES,
                                           description="inclusive [first, last] ranges the fleet has not "
                                           "received although later ones arrived: send again")


ClaimId = Annotated[int, Field(ge=0, lt=2**31)]


class Claim(_Model):
    """Scanner to hub: this ticket passed every check here; may I admit it? Asked before the lamp."""

    id: ClaimId = Field(description="the scanner's question number; the answer repeats it")
    event: EventId
    ticket: TicketId
    ts: EpochMs = Field(description="scan time")


class FirstScan(_Model):
    device: Id
    ts: EpochMs


class Claimed(_Model):
    """Hub to scanner: admit, or refuse because another door (``first``) admitted this ticket."""

    id: ClaimId
    admit: bool
    first: FirstScan | None = None
    # Why a claim is refused: "already_admitted" (another door, ``first``) or "revoked" (the kit's
    # or the fleet's list has it). Absent: already_admitted, as hubs before it said.
    reason: Literal["already_admitted", "revoked"] | None = None


class KitTime(_Model):
    """The kit's clock on ``popkit/v1/<kit>/time`` (QoS 0, never retained), from the kit's agent."""

    ts: EpochMs = Field(description="the kit's time when sent, ms since the Unix epoch")
    src: Literal["ntp", "rtc", "last_known"] = Field(description="where the Pi's time comes from: NTP, its "
                                                      "real-time clock, or the last time it knew (no RTC, no uplink)")
    synced: bool = Field(description="the Pi's clock is disciplined (NTP or RTC); false on its last known time")


class UpdateOffer(_Model):
    """The kit's agent to one ESP32 on ``popkit/v1/<kit>/<device>/update`` (retained at the kit broker,
    QoS 1; an empty payload withdraws it): take this release from the kit's update server
    (docs/updates.md). The device fetches ``http://<host>:<port>/updates/<release>/...`` in chunks,
    checks the manifest's tag under its own update key, and reports in its ``state.update``. A device
    that runs ``fw`` already, or whose last try of this ``id`` failed, does nothing."""

    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="this offer; a new id asks again")]
    release: Annotated[str, Field(pattern=r"^(scanner|lighting)-[0-9]+\.[0-9]+\.[0-9]+$")]
    fw: str = Field(max_length=40, description="what the device reports in state.fw once it runs the release")
    host: str = Field(max_length=64, description="the agent's address on the kit network")
    port: int = Field(ge=1, le=65535)
    rollback: bool = Field(default=False, description="ops asked for an older version: the device takes it")
    ts: EpochMs


class UpdateCommandArgs(_Model):
    """``args`` of the fleet's ``update`` command to a kit's agent: fetch this release into the kit's
    cache (once per kit) from ``url`` with ``token``, then offer it to ``device`` (the agent itself
    for an agent release). Acked ``ok`` when taken; the device's own state reports its progress."""

    rollout: int = Field(ge=0)
    release: Annotated[str, Field(pattern=r"^(scanner|lighting|agent)-[0-9]+\.[0-9]+\.[0-9]+$")]
    device: Id
    fw: str = Field(max_length=40)
    manifest_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)
    url: str = Field(max_length=300, description="the bundle's folder on the fleet, ending in /: "
                     "<url>manifest.json, <url>manifest.sig, <url>files/<path> (Range honoured)")
    token: str = Field(max_length=300, description="sent as `Authorization: Bearer <token>`: this kit, this "
                       "release, until it expires")
    downgrade: bool = False


# ---------------------------------------------------------------- micro-retail (issue 19, docs/retail.md)
# Orders and refunds are made on the kit's till (the agent) and travel as its events ("order",
# "refund") through its outbox, so the fleet's end-to-end receipts cover money as they cover
# check-ins. Money is integer minor units, tax basis points (kits/retail/money.py); an order carries
# each line's price version, so it keeps the price it was sold at. Ids are UUIDs made on the till:
# the fleet stores the same id with the same body once, and the same id with another body as a
# conflict, flagged, never merged.

from kits.retail import money as _money  # noqa: E402  (pure: no import back into this module)
from kits.retail import sku as _skus  # noqa: E402

UUID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
OrderId = Annotated[str, Field(pattern=f"^{UUID_RE}$", description="a UUID made where the order is made, lowercase")]
SkuCode = Annotated[str, Field(min_length=1, max_length=13)]
Minor = Annotated[int, Field(ge=0, le=_money.MAX_PRICE_MINOR * _money.MAX_QTY)]
PAYMENTS = ("cash", "card_terminal", "other")
Payment = Literal["cash", "card_terminal", "other"]  # no card processing: an external terminal is recorded
MAX_ORDER_LINES = 24  # an order event stays inside MAX_DEVICE_PAYLOAD (a line is ~110 bytes)
TILL_CODE_MAX = 32


def _sku_checked(value: str) -> str:
    problem = _skus.sku_problem(value)
    if problem:
        raise ValueError(problem)
    return value


class OrderLine(_Model):
    """One product sold: ``qty`` x ``unit`` at ``tax_bp`` (tax included), as money.line_total computes it."""

    sku: SkuCode
    qty: int = Field(ge=1, le=_money.MAX_QTY)
    unit: int = Field(ge=0, le=_money.MAX_PRICE_MINOR, description="unit price, gross, minor units")
    price_version: int = Field(ge=1, description="the catalog's price version this unit price is")
    tax_bp: int = Field(ge=0, le=_money.MAX_TAX_BP)
    net: Minor
    tax: Minor
    gross: Minor

    @model_validator(mode="after")
    def _adds_up(self) -> "OrderLine":
        _sku_checked(self.sku)
        want = _money.line_total(self.unit, self.qty, self.tax_bp)
        if (self.net, self.tax, self.gross) != tuple(want):
            raise ValueError(f"line {self.sku}: net/tax/gross must be {want.net}/{want.tax}/{want.gross} "
                             f"for {self.qty} x {self.unit} at {self.tax_bp} bp")
        return self


class _Sale(_Model):
    """What an order and a refund share: where and when the till made it, and by whom."""

    id: OrderId
    kit: Id
    event: EventId
    till: Id = Field(description="the till station (a phone's page and the scanners set to it)")
    n: int = Field(ge=1, lt=2**31, description="the station's own running number: the local order, "
                   "kept when the clock is unset")
    ts: EpochMs
    # "unset": the till had no trusted time (issue 9): ts is its own clock, n keeps the order.
    clock: Literal["unset"] | None = None
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    net: Minor
    tax: Minor
    gross: Minor
    by: str = Field(min_length=1, max_length=63, description="the crew login that took it")

    def _totals(self, lines: list) -> None:
        if (self.net, self.tax, self.gross) != (sum(x.net for x in lines), sum(x.tax for x in lines),
                                                 sum(x.gross for x in lines)):
            raise ValueError("net/tax/gross must be the sums of the lines")


class Order(_Sale):
    """``data`` of an ``order`` event from a kit's till. Never edited: refunds and voids are new records."""

    lines: list[OrderLine] = Field(min_length=1, max_length=MAX_ORDER_LINES)
    payment: Payment
    # SKUs this order took below zero stock: sold anyway (stall counts are often wrong) and flagged.
    oversold: list[SkuCode] = Field(default_factory=list, max_length=MAX_ORDER_LINES)

    @model_validator(mode="after")
    def _consistent(self) -> "Order":
        self._totals(self.lines)
        return self


class RefundLine(_Model):
    sku: SkuCode
    qty: int = Field(ge=1, le=_money.MAX_QTY)
    net: Minor
    tax: Minor
    gross: Minor


class Refund(_Sale):
    """``data`` of a ``refund`` event: money (and by default stock) back for lines of ``order``.
    ``kind`` "void": the whole order cancelled at the till (every line, in full)."""

    order: OrderId
    kind: Literal["refund", "void"]
    lines: list[RefundLine] = Field(min_length=1, max_length=MAX_ORDER_LINES)
    restock: bool = True
    reason: str = Field(default="", max_length=120)

    @model_validator(mode="after")
    def _consistent(self) -> "Refund":
        self._totals(self.lines)
        if self.order == self.id:
            raise ValueError("a refund has its own id, not its order's")
        return self


class TillScan(_Model):
    """Scanner (till mode) to the kit's till on ``popkit/v1/<kit>/<device>/till``: this code was scanned."""

    id: ClaimId = Field(description="the scanner's question number; the answer repeats it")
    code: str = Field(min_length=1, max_length=TILL_CODE_MAX, description="the text the scan module read")
    till: Id = Field(default="main", description="the station whose open order takes the line")
    ts: EpochMs


class TillAnswer(_Model):
    """The till to the scanner on ``.../tilled``: the line was added (lamp green, one beep), or why not
    (lamp red, long beep; the order is unchanged)."""

    id: ClaimId
    ok: bool
    sku: SkuCode | None = None
    qty: int | None = Field(default=None, ge=1, description="that SKU's quantity on the open order now")
    reason: Literal["unknown_sku", "bad_code", "no_till", "full"] | None = None


EVENT_DATA_MODELS["order"] = Order
EVENT_DATA_MODELS["refund"] = Refund


CHANNEL_MODELS: dict[str, Any] = {
    "state": State,
    "telemetry": Telemetry,
    "event": Event,
    "cmd": Command,
    "ack": Ack,
    "config": Config,
    "receipt": Receipt,
    "claim": Claim,
    "claimed": Claimed,
    "update": UpdateOffer,
    "till": TillScan,
    "tilled": TillAnswer,
}
# Kit-level messages: one topic per kit (popkit/v1/<kit>/<name>), not in any device tree.
class KitKey(_Model):
    """An event's ticket key as a scanner takes it (``data.keys`` of its config, or the kit's list)."""

    event: EventId
    key: str = Field(pattern=r"^[0-9a-f]{64}$", description="the HMAC-SHA256 key, hex")
    not_before: int = Field(ge=0, description="Unix s: its tickets verify from then")
    expires: int = Field(ge=0, description="Unix s: from then the scanner drops the key (0: never)")


class KitRevocations(_Model):
    """The kit's own ticket list on ``popkit/v1/<kit>/revocations`` (retained at the kit broker, QoS 1),
    from the kit's agent: every ticket revoked at the kit, and the event keys the agent holds (from
    the scanners' configs), so a scanner gets them with no uplink. A scanner refuses a ticket that
    this list, its config or its flashed file revokes."""

    ts: EpochMs
    revoked: dict[EventId, list[TicketId]] = Field(default_factory=dict)
    keys: list[KitKey] = Field(default_factory=list)
    events: list[EventId] = Field(default_factory=list, description="every event the kit holds: its keys, its "
                                  "revocations, and the events scanned at its doors (a key flashed on the scanners)")


KIT_MODELS: dict[str, Any] = {TIME_CHANNEL: KitTime, REVOCATIONS_CHANNEL: KitRevocations,
                              REVOKE_CHANNEL: RevocationData}
_ADAPTERS = {ch: TypeAdapter(m) for ch, m in {**CHANNEL_MODELS, **KIT_MODELS}.items()}
# Typed payloads inside a channel, exported for the firmware too (event data by kind).
DATA_MODELS: dict[str, Any] = {f"event.{k}": m for k, m in EVENT_DATA_MODELS.items()}


def max_payload(channel: str) -> int:
    return MAX_CONFIG_PAYLOAD if channel == "config" else MAX_DEVICE_PAYLOAD


def decode(channel: str, payload: bytes) -> Any:
    """Validate one payload for ``channel``; raise ContractError with a metric reason."""
    if len(payload) > max_payload(channel):
        raise ContractError("oversize", f"{len(payload)} bytes > {max_payload(channel)} for {channel}")
    if b"NaN" in payload or b"Infinity" in payload:
        # The parser below takes these, JSON does not: the fleet stores payloads as sent, for JSON
        # readers. Strings may hold the words, so only a strict parse can tell.
        try:
            from_json(payload, allow_inf_nan=False)
        except ValueError as exc:
            raise ContractError("bad_json", f"{exc} (JSON has no NaN or Infinity)") from None
    try:
        return _ADAPTERS[channel].validate_json(payload)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        if first["type"] == "json_invalid":
            raise ContractError("bad_json", first["msg"]) from None
        where = ".".join(str(p) for p in first["loc"]) or "payload"
        raise ContractError("invalid", f"{where}: {first['msg']}") from None


def encode(message: BaseModel) -> bytes:
    return message.model_dump_json(exclude_none=True).encode()


def ranges(seqs: list[int]) -> list[tuple[int, int]]:
    """Compress sequence numbers into sorted inclusive ranges: [1,2,3,7] -> [(1,3),(7,7)]."""
    out: list[tuple[int, int]] = []
    for s in sorted(set(seqs)):
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


# ---------------------------------------------------------------- JSON Schema export

def json_schemas() -> dict[str, dict]:
    schemas = {}
    for channel, adapter in _ADAPTERS.items():
        schema = adapter.json_schema()
        schema["$id"] = f"https://popkit.invalid/schema/{ROOT}/{channel}.json"
        schema.setdefault("title", channel)
        schema["x-topic"] = f"{ROOT}/<kit>/{channel}" if channel in KIT_MODELS else f"{ROOT}/<kit>/<device>/{channel}"
        schemas[channel] = schema
    for name, model in DATA_MODELS.items():
        schema = model.model_json_schema()
        schema["$id"] = f"https://popkit.invalid/schema/{ROOT}/{name}.json"
        schemas[name] = schema
    return schemas


def export(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for channel, schema in json_schemas().items():
        path = directory / f"{channel}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written


if __name__ == "__main__":  # python -m kits.contract export docs/protocol
    if len(sys.argv) != 3 or sys.argv[1] != "export":
        sys.exit("usage: python -m kits.contract export DIR")
    for p in export(Path(sys.argv[2])):
        print(p)
