"""The API's shapes for releases, rollouts and kits' update state (fleet/api/routes/updates.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fleet.updates.model import parse_groups
from kits.contract import Id

RELEASE_ID = r"^(scanner|lighting|agent)-(0|[1-9][0-9]{0,5})\.(0|[1-9][0-9]{0,5})\.(0|[1-9][0-9]{0,5})$"
B64 = r"^[A-Za-z0-9+/]*={0,2}$"


class ReleaseIn(BaseModel):
    """A bundle as `popkit release build` wrote it: manifest.json's exact text, manifest.sig as hex,
    and every file under files/ (path -> base64 of its bytes)."""

    model_config = ConfigDict(extra="forbid")

    manifest: str = Field(min_length=2, max_length=1_000_000, description="manifest.json, byte for byte")
    sig: str = Field(pattern=r"^[0-9a-fA-F]{128}$", description="manifest.sig: the 64-byte signature as hex")
    files: dict[str, str] = Field(description="files/<path> -> base64 of its content",
                                  json_schema_extra={"additionalProperties": {"type": "string", "pattern": B64}})


class FileOut(BaseModel):
    path: str
    size: int
    sha256: str


class ReleaseOut(BaseModel):
    id: str = Field(description="<role>-<version>")
    role: str
    version: str
    fw: str = Field(description="what a device running it reports")
    mpy_abi: int | None
    key_id: str
    size: int = Field(description="bytes of all its files")
    manifest_sha256: str
    files: list[FileOut]
    created_ms: int
    created_by: str | None
    retired_ms: int | None


Group = int | str


class RolloutIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    release: str = Field(pattern=RELEASE_ID, description="the release's id, e.g. scanner-0.3.1")
    kits: list[Id] = Field(default_factory=list, max_length=10_000, description="only these kits (empty: all)")
    devices: list[Id] = Field(default_factory=list, max_length=10_000, description="only these devices (empty: all)")
    groups: list[Group] = Field(default_factory=lambda: [1, "10%", "50%", "100%"], min_length=1, max_length=20,
                                description="cumulative: a count of devices (the canary) or a percentage of them")
    success_threshold: float = Field(default=1.0, gt=0, le=1, description="fraction of a group committed "
                                     "before the next group is offered")
    error_threshold: float = Field(default=0.2, gt=0, le=1, description="fraction of a group failed or "
                                   "rolled back that pauses the rollout")
    rate_per_min: int = Field(default=20, ge=1, le=100_000, description="devices offered per minute, at most")
    downgrade: bool = Field(default=False, description="a rollback ops ask for: devices running a newer "
                            "version take this one (else they are left out, and refuse it)")

    @field_validator("groups")
    @classmethod
    def _groups(cls, v: list[Group]) -> list[Group]:
        parse_groups(v)
        return v


class PauseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=200)


class GroupOut(BaseModel):
    group: int = Field(description="1 is the canary")
    spec: str
    size: int
    committed: int
    failed: int = Field(description="failed or rolled back")
    in_flight: int = Field(description="offered, downloading or on trial")
    not_started: int
    complete: bool = Field(description="enough committed for the next group to start")


class DeviceUpdateOut(BaseModel):
    device_id: str
    kit_id: str
    group: int
    state: Literal["pending", "waiting", "offered", "downloading", "trial", "committed", "rolled_back", "failed"]
    reason: str | None = Field(description="why it waits (as of now), or what the device reported")
    offered_ms: int | None
    updated_ms: int


class RolloutSummaryOut(BaseModel):
    id: int
    release: str
    role: str
    kits: list[str]
    devices: list[str]
    groups: list[str]
    success_threshold: float
    error_threshold: float
    rate_per_min: int
    downgrade: bool
    state: Literal["running", "paused", "aborted", "done"]
    pause_reason: str | None
    created_ms: int
    created_by: str | None
    updated_ms: int


class RolloutTotals(BaseModel):
    size: int = Field(description="the rollout's devices")
    committed: int
    failed: int = Field(description="failed or rolled back")
    in_flight: int = Field(description="offered, downloading or on trial")
    not_started: int


class RolloutListItem(RolloutSummaryOut):
    totals: RolloutTotals


class RolloutOut(RolloutSummaryOut):
    active_group: int | None = Field(description="the first group not yet complete (1-based); null: all are")
    progress: list[GroupOut]
    device_updates: list[DeviceUpdateOut]


class HoldIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=200)


class HoldOut(BaseModel):
    kit_id: str
    by: str
    reason: str | None
    since_ms: int


class KitDeviceUpdateOut(DeviceUpdateOut):
    rollout: int
    release: str


class KitUpdatesOut(BaseModel):
    kit_id: str
    hold: HoldOut | None
    waits: str | None = Field(description="why no device of the kit is offered an update now (a hold, a show)")
    devices: list[KitDeviceUpdateOut]


class LiftOut(BaseModel):
    kit_id: str
    lifted: bool = Field(description="false: the kit was not held")
