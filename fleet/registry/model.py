"""What the registry hands the other parts of the fleet."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DeviceRef:
    id: str
    kit_id: str
    role: str


@dataclass(frozen=True)
class KitInfo:
    """What only the manifest says: the kit's agent, its event window and its telemetry periods."""

    id: str
    agent: str | None
    doors_open_ms: int | None = None
    ends_ms: int | None = None
    telemetry_s: dict[str, float] = field(default_factory=dict)

    def event_view(self) -> dict | None:
        if self.ends_ms is None:
            return None
        return dict(doors_open_ms=self.doors_open_ms, ends_ms=self.ends_ms)


def epoch_ms(t) -> int:
    return int(t.timestamp() * 1000)
