"""Silent gaps: later seqs of a stream arrived, an earlier one never did. Ask its producer again.

A broker queue that overflowed or a bridge that lost a message leaves it in its producer's outbox
(no receipt named it), but the producer would only send it again once its receipt is overdue
(15 s, then longer). The fleet knows much sooner: its ``streams`` row has max_seq > received. The
detector finds which seqs are missing and asks for them with a receipt that names them in
``missing`` (kits/contract.py Receipt, on the producer's receipt topic); the producer resends them
at once.

Workers sharing a subscription each see only part of a device's messages, so the detector reads
the database, never what its own worker saw:

* one worker detects at a time (a lease, renewed every tick), so N workers do not ask N times;
* each tick (``gap_check_s``) it reads the ledger rows written since the last one (a primary key
  range: its cost follows the write rate, not the tables' size) to learn which streams moved, and
  reads ``streams`` for those and for the ones it is asking about. Only a stream with
  max_seq > received whose counts changed has its seqs read (the unique key's index), and only
  from its oldest open hole or the last seq it checked on;
* a missing seq is asked for once it has stayed missing ``gap_grace_s`` (another worker may still be
  committing it, or it is being reordered in flight), again with backoff while it stays missing,
  and given up after ``gap_max_asks`` (telemetry a full outbox dropped never comes; the gap stays
  counted in health);
* nothing is asked while the worker is behind (a backlog in its queue): the missing message is then
  most likely queued as well, and asking would only add duplicates to the backlog.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fleet.metrics import IngestMetrics
from fleet.settings import FleetSettings
from fleet.db import now_ms
from kits.contract import RECEIPT_MAX_RANGES, Receipt, ranges

if TYPE_CHECKING:
    from fleet.store import Store

log = logging.getLogger("popkit.fleet.gaps")

LEASE = "gap_detector"
LEASE_TTL_S = 3.0  # a detector silent this long (its worker died or lost the broker) is replaced
ROWS_PER_TICK = 20_000  # ledger rows read per table and tick; a burst beyond this is read over the next ticks
LOOKBACK_ROWS = 5_000  # on taking the lease: the streams written this recently are looked at too
SCAN_WINDOW = 5_000  # seqs looked at per stream and tick: a hole further back is the producer's timeout's
MAX_RANGES = RECEIPT_MAX_RANGES  # per request (the contract's bound: the firmware decodes it whole)
FORGET_S = 3600.0  # a stream with only given-up holes is forgotten after this long without a write


@dataclass
class _Hole:
    due: float  # when it is next asked for (monotonic)
    asks: int = 0


@dataclass
class _Stream:
    checked_to: int  # every seq up to here is stored, an open hole, or given up
    gaps: int = -1  # max_seq - received when last read (-1: never)
    holes: dict[int, _Hole] = field(default_factory=dict)
    moved: float = 0.0  # when a write to it was last seen


class GapDetector:
    """Run by the ingest writer thread: ``tick()`` every ``gap_check_s``; ``ask(device, receipt)``
    publishes a gap request to the device's producer."""

    def __init__(self, store: Store, settings: FleetSettings, metrics: IngestMetrics,
                 ask: Callable[[str, Receipt], None], clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self._ask = ask
        self._clock = clock
        self._holder = secrets.randbits(62)  # this worker, in the lease row
        self._leading = False
        self._streams: dict[tuple[str, str], _Stream] = {}
        self._after: list[int] = []  # telemetry's and events' highest row ids read
        # Each tick reads from where the tick before the last one stopped, so once more what the last
        # one read: PostgreSQL hands ids out at insert, not at commit, and a batch that committed after
        # a later one would otherwise be skipped. (Were one missed, its stream shows at its next row.)
        self._from: list[int] = []
        self._forget_at = 0.0

    @property
    def leading(self) -> bool:
        return self._leading

    def tick(self, backlogged: bool = False) -> int:
        """One look: returns how many seqs were asked for."""
        now = self._clock()
        if not self._lead():
            return 0
        moved = self._moved()
        keys = list(moved | {k for k, st in self._streams.items() if st.holes})
        counts = self.store.ledger.gapped_streams(keys) if keys else {}
        spans = {}
        for key in keys:
            max_seq, received = counts.get(key, (0, 0))
            span = self._span_to_read(key, max_seq, max_seq - received, now, key in moved)
            if span is not None:
                spans[key] = span
        for key, missing in (self.store.ledger.missing_seqs(spans) if spans else {}).items():
            max_seq, received = counts[key]
            self._update(key, missing, max_seq, max_seq - received, now)
        asked = 0 if backlogged else self._ask_due(now)
        if now >= self._forget_at:
            self._forget_at = now + 60
            self._forget(now)
        return asked

    # ------------------------------------------------------------ internals

    def _lead(self) -> bool:
        ttl_ms = int(max(LEASE_TTL_S, 3 * self.settings.gap_check_s) * 1000)
        leading = self.store.leases.hold(LEASE, self._holder, now_ms(), ttl_ms)
        if leading != self._leading:
            log.info("gap detection %s on this worker", "starts" if leading else "moved to another worker")
            # Asks and read positions are the leader's; a new leader starts from the database again.
            self._streams.clear()
            self._after = self._from = []
        self._leading = leading
        return leading

    def _moved(self) -> set[tuple[str, str]]:
        if not self._after:
            self._after = self._from = [max(0, top - LOOKBACK_ROWS) for top in self.store.ledger.tops()]
        moved, tel_top, ev_top = self.store.ledger.streams_written(self._from[0], self._from[1], ROWS_PER_TICK)
        self._from = self._after
        self._after = [max(self._after[0], tel_top), max(self._after[1], ev_top)]
        return moved

    def _span_to_read(self, key: tuple[str, str], max_seq: int, gaps: int, now: float,
                      moved: bool) -> tuple[int, int] | None:
        """The seqs of a stream to look up to bring its holes up to date; None: nothing to look up."""
        if gaps <= 0:
            self._streams.pop(key, None)  # complete (or complete again)
            return None
        st = self._streams.get(key)
        if st is None:
            st = self._streams[key] = _Stream(checked_to=max(0, max_seq - SCAN_WINDOW))
        if moved:
            st.moved = now
        if max_seq == st.checked_to and gaps == st.gaps:
            return None  # nothing arrived since the last look (a seq arriving late raises received)
        if not st.holes and gaps == st.gaps:
            # As many missing as before, none of them open: the seqs written since all arrived.
            # (A given-up seq filled late in the same tick as a new hole hides it; the producer's
            # own timeout still resends that one.)
            st.checked_to = max(st.checked_to, max_seq)
            return None
        # From the oldest open hole (holes live for the asks only, ~30 s) or the first new seq.
        start = max(st.checked_to + 1, max_seq - SCAN_WINDOW + 1)
        return min(min(st.holes, default=start), start), max_seq

    def _update(self, key: tuple[str, str], missing_seqs: list[int], max_seq: int, gaps: int, now: float) -> None:
        st = self._streams[key]
        missing = set(missing_seqs)
        for seq in [s for s in st.holes if s not in missing]:
            del st.holes[seq]  # arrived
        for seq in missing:
            if seq > st.checked_to and seq not in st.holes:
                st.holes[seq] = _Hole(due=now + self.settings.gap_grace_s)
        st.checked_to = max(st.checked_to, max_seq)
        st.gaps = gaps

    def _ask_due(self, now: float) -> int:
        s = self.settings
        asked = 0
        for (device, boot), st in self._streams.items():
            due = sorted(seq for seq, h in st.holes.items() if h.due <= now)
            if not due:
                continue
            for seq in [q for q in due if st.holes[q].asks >= s.gap_max_asks]:
                del st.holes[seq]  # asked often enough: its producer no longer has it
                self.metrics.gaps_given_up += 1
            spans = ranges([q for q in due if q in st.holes])[:MAX_RANGES]
            if not spans:
                continue
            self._ask(device, Receipt(boot=boot, seqs=[], ts=now_ms(), missing=spans))
            self.metrics.nacks += 1
            for a, b in spans:
                for seq in range(a, b + 1):
                    h = st.holes.get(seq)
                    if h is not None:
                        h.due = now + min(s.gap_retry_s * 2 ** h.asks, s.gap_retry_max_s)
                        h.asks += 1
                        asked += 1
        return asked

    def _forget(self, now: float) -> None:
        """Streams left with only given-up holes stop being remembered once quiet for long."""
        for key in [k for k, st in self._streams.items() if not st.holes and now - st.moved > FORGET_S]:
            del self._streams[key]
