"""The agent's outbox: what it keeps, what it may drop, and that it survives a restart."""

from __future__ import annotations

import logging

from agent.link import backoff_delay
from agent.outbox import Outbox
from fleet.metrics import IngestMetrics
from fleet.ledger import Batch, RejectedMessage
from fleet.store import Store


def fill(box: Outbox, device: str, seqs, droppable: bool) -> None:
    for s in seqs:
        box.put(device, "b1", s, f"popkit/v1/k/{device}/x", b"{}", droppable=droppable)


def test_full_outbox_drops_oldest_telemetry_and_never_an_event(tmp_path):
    box = Outbox(tmp_path / "o.db", cap=10)
    fill(box, "d", range(1, 5), droppable=False)  # 4 check-ins
    fill(box, "d", range(5, 17), droppable=True)  # 12 readings: 6 must go, oldest first
    assert len(box) == 10 and box.dropped == 6
    seqs = sorted(s for _, _, s in box.keys())
    assert seqs == [1, 2, 3, 4, 11, 12, 13, 14, 15, 16]
    # Full of events only: more events are kept past the cap (counted), nothing is lost.
    box2 = Outbox(tmp_path / "o2.db", cap=3)
    fill(box2, "d", range(1, 6), droppable=False)
    assert len(box2) == 5 and box2.over_cap == 2 and box2.dropped == 0


def test_receipts_remove_exactly_their_ranges_and_entries_survive_reopening(tmp_path):
    box = Outbox(tmp_path / "o.db")
    fill(box, "d", range(1, 11), droppable=False)
    fill(box, "e", range(1, 4), droppable=False)
    box.mark_sent([e.id for e in box.due(resend_after_s=60)])
    assert box.due(resend_after_s=60) == []  # in flight, receipt not yet overdue
    assert box.confirm("d", "b1", [(1, 3), (7, 7)]) == 4
    assert box.confirm("d", "other-boot", [(1, 10)]) == 0
    box.close()
    again = Outbox(tmp_path / "o.db")
    assert sorted(again.keys()) == [("d", "b1", s) for s in (4, 5, 6, 8, 9, 10)] + [("e", "b1", s) for s in (1, 2, 3)]
    # After a restart nothing counts as sent: all of it goes out again.
    assert len(again.due(resend_after_s=60)) == 9


def test_reconnect_backoff_is_jittered_and_capped():
    delays = [backoff_delay(a) for a in range(12) for _ in range(50)]
    assert min(delays) >= 0.25 and max(delays) <= 30.0
    late = {round(backoff_delay(10), 3) for _ in range(50)}
    assert len(late) > 40, "no jitter: every kit would reconnect in the same instant"


def test_dead_letters_stay_bounded(tmp_path):
    store = Store.open(f"sqlite:///{tmp_path / 'f.db'}", dead_letter_cap=100)
    for _ in range(60):
        store.ledger.write_batch(Batch(rejected=[RejectedMessage("t", b"x", "bad_json", "d")] * 10))
    kept = store.ledger.dead_letters(limit=1000)
    assert len(kept) == 100 and kept[0]["id"] == 600  # the newest are the ones kept
    store.close()


def test_rejections_are_logged_once_per_reason_per_minute(caplog):
    metrics = IngestMetrics()
    with caplog.at_level(logging.WARNING, logger="popkit.fleet.ingest"):
        for _ in range(500):
            metrics.reject("bad_json", "popkit/v1/k/d/telemetry", "Expecting value")
        metrics.reject("oversize", "popkit/v1/k/d/telemetry", "5000 bytes")
    assert metrics.rejected == {"bad_json": 500, "oversize": 1}
    assert len(caplog.records) == 2
