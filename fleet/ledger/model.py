"""What ingest hands the ledger: validated messages, device states and rejected payloads, in batches."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kits.contract import State

DEAD_LETTER_HEAD = 256  # bytes of a rejected payload kept for diagnosis
HISTORICAL_AFTER_MS = 60_000  # received this long after it happened: the kit held it (FleetSettings.historical_after_s)


@dataclass
class LedgerMessage:
    """A validated telemetry/event/ack message addressed to a known device."""

    device_id: str
    channel: str
    msg: Any  # a contract model with boot, seq, ts
    body: str  # the payload as received (already validated)

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.device_id, self.msg.boot, self.msg.seq)


@dataclass
class RejectedMessage:
    topic: str
    payload: bytes
    reason: str
    detail: str


@dataclass
class Batch:
    ledger: list[LedgerMessage] = field(default_factory=list)
    states: list[tuple[str, State]] = field(default_factory=list)
    rejected: list[RejectedMessage] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ledger) + len(self.states) + len(self.rejected)


@dataclass
class BatchResult:
    inserted: int
    duplicates: int
