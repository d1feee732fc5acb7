"""The venue lighting model: what the crew edits, before it is compiled for a controller.

* ``Venue``: where (IANA zone, latitude/longitude for the sun) and when it is open (weekly hours;
  the safety floor holds while open).
* ``Zone``: a group of lights, mapped to outputs of one or more controllers (a PWM channel of the
  RGBW strip, or a run of DMX slots). A *safety* zone (ingress/egress) has a ``floor_level`` that no
  scene can go below while the venue is open.
* ``Scene``: a level (and optional colour) per zone.
* Schedules, the "schedule" layer, each with a scene and a priority (higher wins where they
  overlap; equal priorities may not overlap): ``OnceWindow``, ``WeeklyWindow``, ``SunWindow``.
* ``Override``: a manual scene (whole venue) or zone level until it expires, above every schedule.

All times in schedules and opening hours are the venue's *local wall-clock* times: the compiler
turns them into UTC with the venue's zone (see ``compiler.local_to_utc`` for the DST rule).
Models refuse unknown fields, and a bad value's error names its field.
"""

from __future__ import annotations

import datetime as _dt
import re
from datetime import date, datetime, time, timedelta
from typing import Annotated, Literal, Union
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from kits.contract import Id

Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
DAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # index = date.weekday()
Level = Annotated[int, Field(ge=0, le=255)]
Channel = Literal["r", "g", "b", "w"]
# 255 is the override layer's: a manual override must beat every schedule.
SchedulePriority = Annotated[int, Field(ge=0, le=254)]
OVERRIDE_PRIORITY = 255

# Local wall-clock times, as the venue's clock reads them: no UTC offset. (JSON Schema's "time" and
# "date-time" formats are RFC 3339's, which require one: the schema says what is accepted and sent.)
_LOCAL_TIME_RE = r"([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]{1,6})?)?"
_LOCAL_DATETIME_RE = r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ]" + _LOCAL_TIME_RE


def _local(kind: type, pattern: str, what: str):
    regex = re.compile(pattern)

    def check(v):
        if isinstance(v, kind):
            return v
        if not isinstance(v, str) or not regex.fullmatch(v):
            raise ValueError(f"a local {what} of the venue, without a UTC offset, not {v!r}")
        return v

    return Annotated[kind, BeforeValidator(check), WithJsonSchema(
        {"type": "string", "pattern": f"^{pattern}$", "description": f"local {what}, without a UTC offset"})]


LocalTime = _local(time, _LOCAL_TIME_RE, "time (HH:MM or HH:MM:SS)")
LocalDateTime = _local(datetime, _LOCAL_DATETIME_RE, "date-time (YYYY-MM-DDTHH:MM[:SS])")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _unique_days(days: list[str]) -> list[str]:
    if len(set(days)) != len(days):
        raise ValueError("days: a day is named twice")
    return days


class OpeningHours(_Model):
    """Open from ``open`` to ``close`` on each of ``days``; ``close <= open`` closes after midnight
    (``close == open``: open round the clock from that day's ``open``)."""

    days: list[Day] = Field(min_length=1)
    open: LocalTime
    close: LocalTime

    _days = field_validator("days")(classmethod(lambda cls, v: _unique_days(v)))


class Venue(_Model):
    id: Id
    name: str = Field(max_length=120)
    tz: str = Field(description="IANA zone name, e.g. Europe/London")
    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)
    hours: list[OpeningHours] = Field(default_factory=list)
    controllers: list[Id] = Field(default_factory=list, max_length=64, description=(
        "the lighting controllers and agent lights ops gave this venue: what its users may map zones to "
        "(besides those its zones already use); only ops change it"))

    @field_validator("tz")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA time zone {v!r} (e.g. Europe/London)") from None
        return v

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.tz)


class Output(_Model):
    """Where a zone's light comes out: a PWM channel, or ``count`` DMX slots from ``slot``."""

    controller: Id
    kind: Literal["pwm", "dmx"]
    channel: Channel | None = None
    slot: int | None = Field(default=None, ge=1, le=512)
    count: int = Field(default=1, ge=1, le=512)

    @model_validator(mode="after")
    def _fits_kind(self) -> "Output":
        if self.kind == "pwm":
            if self.channel is None:
                raise ValueError("channel: a pwm output needs one of r, g, b, w")
            if self.slot is not None:
                raise ValueError("slot: only a dmx output has a slot")
        else:
            if self.slot is None:
                raise ValueError("slot: a dmx output needs its first slot, 1..512")
            if self.channel is not None:
                raise ValueError("channel: only a pwm output has a channel")
            if self.slot + self.count - 1 > 512:
                raise ValueError(f"count: {self.count} slots from slot {self.slot} run past slot 512")
        return self


class Zone(_Model):
    id: Id
    name: str = Field(max_length=120)
    safety: bool = False
    floor_level: Level | None = Field(default=None, description="safety zones: the minimum while the venue is open")
    outputs: list[Output] = Field(min_length=1)

    @model_validator(mode="after")
    def _floor_only_for_safety(self) -> "Zone":
        if self.safety and self.floor_level is None:
            raise ValueError("floor_level: a safety zone needs one, 0..255")
        if not self.safety and self.floor_level is not None:
            raise ValueError("floor_level: only a safety zone has a floor (set safety = true)")
        return self


class ZoneLevel(_Model):
    """A zone's level; ``rgb`` tints its r/g/b outputs (each gets ``level * rgb[i] / 255``)."""

    level: Level
    rgb: tuple[Level, Level, Level] | None = None


class Scene(_Model):
    id: Id
    levels: dict[Id, ZoneLevel] = Field(default_factory=dict, description="zone id -> level; zones not named are off")
    fade_ms: int = Field(default=0, ge=0, le=3_600_000)


class _Schedule(_Model):
    id: Id
    scene: Id
    priority: SchedulePriority = 0


class OnceWindow(_Schedule):
    """One window: ``date`` with ``start``/``end`` local times (``end <= start`` ends the next day),
    or ``start_at``/``end_at`` local date-times (naive: the venue's wall clock)."""

    kind: Literal["once"] = "once"
    date: _dt.date | None = None  # (module-qualified: the field's name shadows the type)
    start: LocalTime | None = None
    end: LocalTime | None = None
    start_at: LocalDateTime | None = None
    end_at: LocalDateTime | None = None

    @model_validator(mode="after")
    def _one_form(self) -> "OnceWindow":
        by_date = (self.date, self.start, self.end)
        by_dt = (self.start_at, self.end_at)
        if all(v is not None for v in by_date) and all(v is None for v in by_dt):
            return self
        if all(v is not None for v in by_dt) and all(v is None for v in by_date):
            for name in ("start_at", "end_at"):
                if getattr(self, name).tzinfo is not None:
                    raise ValueError(f"{name}: a local date-time of the venue, without a UTC offset")
            if self.end_at <= self.start_at:
                raise ValueError(f"end_at: {self.end_at.isoformat()} is not after start_at {self.start_at.isoformat()}")
            return self
        raise ValueError("date, start and end, or start_at and end_at (local times), not a mix")

    def local_span(self) -> tuple[datetime, datetime]:
        if self.start_at is not None:
            return self.start_at, self.end_at  # type: ignore[return-value]
        start = datetime.combine(self.date, self.start)  # type: ignore[arg-type]
        end = datetime.combine(self.date, self.end)  # type: ignore[arg-type]
        return start, end if end > start else end + timedelta(days=1)


class _Recurring(_Schedule):
    days: list[Day] = Field(default_factory=lambda: list(DAYS), min_length=1)
    valid_from: date | None = None
    valid_until: date | None = Field(default=None, description="inclusive: the last date a window may start")

    _days = field_validator("days")(classmethod(lambda cls, v: _unique_days(v)))

    @model_validator(mode="after")
    def _valid_range(self):
        if self.valid_from and self.valid_until and self.valid_until < self.valid_from:
            raise ValueError(f"valid_until: {self.valid_until} is before valid_from {self.valid_from}")
        return self

    def runs_on(self, day: date) -> bool:
        return (DAYS[day.weekday()] in self.days and (self.valid_from is None or day >= self.valid_from)
                and (self.valid_until is None or day <= self.valid_until))


class WeeklyWindow(_Recurring):
    """Every ``days`` from ``start`` to ``end`` local time (``end <= start`` ends after midnight)."""

    kind: Literal["weekly"] = "weekly"
    start: LocalTime
    end: LocalTime


class SunEdge(_Model):
    event: Literal["sunrise", "sunset"]
    offset_min: int = Field(default=0, ge=-720, le=720)


class SunWindow(_Recurring):
    """From sunrise/sunset ± minutes to a local time or another sun edge (the next one after the
    start: ``sunset`` to ``sunrise`` runs overnight). Days without that sun event (polar day or
    night) have no window."""

    kind: Literal["sun"] = "sun"
    start: SunEdge
    end: SunEdge | LocalTime


Schedule = Annotated[Union[OnceWindow, WeeklyWindow, SunWindow], Field(discriminator="kind")]


class Override(_Model):
    """A manual override until ``expires``: a whole ``scene`` (replaces what the schedule shows), or
    one ``zone`` at ``level`` (the rest of the schedule's scene stays). Later overrides in the list
    win over earlier ones where they overlap."""

    id: Id
    scene: Id | None = None
    zone: Id | None = None
    level: ZoneLevel | None = None
    fade_ms: int = Field(default=0, ge=0, le=3_600_000, description="zone overrides: the fade to it")
    starts: datetime | None = Field(default=None, description="default: already on")
    expires: datetime

    @model_validator(mode="after")
    def _one_target(self) -> "Override":
        for name in ("starts", "expires"):
            t = getattr(self, name)
            if t is not None and t.tzinfo is None:
                raise ValueError(f"{name} needs a UTC offset (e.g. 2026-11-21T23:30:00Z)")
        if self.scene is not None and (self.zone is not None or self.level is not None):
            raise ValueError("scene: an override sets a whole scene, or a zone and its level, not both")
        if self.scene is None and (self.zone is None or self.level is None):
            raise ValueError("zone: an override needs a scene, or a zone and a level")
        if self.starts is not None and self.expires <= self.starts:
            raise ValueError(f"expires: {self.expires.isoformat()} is not after starts {self.starts.isoformat()}")
        return self
