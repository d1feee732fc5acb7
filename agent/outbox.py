"""The agent's on-disk outbox: every message owed to the fleet waits here until its receipt.

A broker's PUBACK only means the broker has it in memory; the fleet's receipt
means it is committed to the fleet's database. So an entry leaves the outbox
only on a receipt, and survives ``kill -9`` and power loss in between
(SQLite WAL, ``synchronous=FULL``).

Bound and policy: at most ``cap`` entries. When full, the oldest *telemetry*
entry is dropped (and counted); events and acks (check-ins, print jobs, money)
are never dropped: past the cap they are kept and counted as ``over_cap`` so
the kit's health shows it, because losing them would be worse than using disk.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    device    TEXT    NOT NULL,
    boot      TEXT    NOT NULL,
    seq       INTEGER NOT NULL,
    topic     TEXT    NOT NULL,
    payload   BLOB    NOT NULL,
    droppable INTEGER NOT NULL,
    sent_ms   INTEGER,
    UNIQUE (device, boot, seq)
);
CREATE INDEX IF NOT EXISTS outbox_droppable ON outbox (droppable, id);
"""


@dataclass(frozen=True)
class Entry:
    id: int
    device: str
    boot: str
    seq: int
    topic: str
    payload: bytes
    sent_ms: int | None = None  # when it was last published; None: never (or asked for again)


class Outbox:
    def __init__(self, path: str | Path, cap: int = 50_000):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.cap = cap
        self.dropped = 0  # telemetry dropped oldest-first since this process started
        self.over_cap = 0  # undroppable entries kept past the cap
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        # What was "sent" before a crash may never have reached the broker: send it again.
        self._db.execute("UPDATE outbox SET sent_ms = NULL")
        self._count = self._db.execute("SELECT count(*) FROM outbox").fetchone()[0]

    def __len__(self) -> int:
        return self._count

    def put(self, device: str, boot: str, seq: int, topic: str, payload: bytes, droppable: bool) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if self._count >= self.cap:
                    self._make_room(droppable)
                self._db.execute(
                    "INSERT INTO outbox (device, boot, seq, topic, payload, droppable) VALUES (?, ?, ?, ?, ?, ?)",
                    (device, boot, seq, topic, payload, int(droppable)),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                self._count = self._db.execute("SELECT count(*) FROM outbox").fetchone()[0]
                raise
            self._count += 1

    def _make_room(self, incoming_droppable: bool) -> None:
        oldest = self._db.execute("SELECT id FROM outbox WHERE droppable = 1 ORDER BY id LIMIT 1").fetchone()
        if oldest is not None:
            self._db.execute("DELETE FROM outbox WHERE id = ?", oldest)
            self._count -= 1
            self.dropped += 1
        elif not incoming_droppable:
            self.over_cap += 1
        # else: full of undroppable entries and this one is telemetry: it is kept; the
        # next put of telemetry will find it droppable. Nothing undroppable is ever lost.

    def due(self, resend_after_s: float, limit: int = 500) -> list[Entry]:
        """Entries never sent, or sent so long ago that their receipt is overdue, oldest first."""
        cutoff = int((time.time() - resend_after_s) * 1000)
        with self._lock:
            rows = self._db.execute(
                "SELECT id, device, boot, seq, topic, payload, sent_ms FROM outbox"
                " WHERE sent_ms IS NULL OR sent_ms < ? ORDER BY id LIMIT ?",
                (cutoff, limit),
            ).fetchall()
        return [Entry(*r) for r in rows]

    def mark_sent(self, ids: list[int]) -> None:
        now = int(time.time() * 1000)
        with self._lock:
            self._db.executemany("UPDATE outbox SET sent_ms = ? WHERE id = ?", [(now, i) for i in ids])

    def mark_unsent(self) -> None:
        """After a reconnect nothing in flight can be trusted to have arrived."""
        with self._lock:
            self._db.execute("UPDATE outbox SET sent_ms = NULL")

    def mark_missing(self, device: str, boot: str, seq_ranges: list[tuple[int, int]]) -> int:
        """The fleet says these never arrived although later ones did: due again now. Returns how
        many are here (one it asks for that is not was receipted already, or dropped at the cap)."""
        with self._lock:
            return sum(self._db.execute(
                "UPDATE outbox SET sent_ms = NULL WHERE device = ? AND boot = ? AND seq BETWEEN ? AND ?",
                (device, boot, first, last)).rowcount for first, last in seq_ranges)

    def confirm(self, device: str, boot: str, seq_ranges: list[tuple[int, int]]) -> int:
        """The fleet has committed these: forget them. Returns how many entries left."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            removed = 0
            for first, last in seq_ranges:
                cur = self._db.execute(
                    "DELETE FROM outbox WHERE device = ? AND boot = ? AND seq BETWEEN ? AND ?", (device, boot, first, last)
                )
                removed += cur.rowcount
            self._db.execute("COMMIT")
            self._count -= removed
        return removed

    def waiting(self, device: str, keys: list[tuple[str, int]]) -> set[tuple[str, int]]:
        """Which of ``device``'s (boot, seq) are still here: not receipted by the fleet yet."""
        with self._lock:
            return {(b, s) for b, s in keys if self._db.execute(
                "SELECT 1 FROM outbox WHERE device = ? AND boot = ? AND seq = ?", (device, b, s)).fetchone()}

    def keys(self) -> set[tuple[str, str, int]]:
        with self._lock:
            return {tuple(r) for r in self._db.execute("SELECT device, boot, seq FROM outbox")}

    def close(self) -> None:
        with self._lock:
            self._db.close()
