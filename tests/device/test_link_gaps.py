"""The firmware's side of silent gaps (device/lib/link.py), in the real MicroPython unix port.

What ops would see: check-ins a scanner sent while nobody was listening (lost on the way, the
device still holding them) reach the fleet within seconds of the fleet noticing the hole, not at
the device's receipt timeout; a gap request makes the scanner resend just what was asked; and a
scanner whose receipts stay away resends less and less often, back to its usual pace once the
fleet answers.
"""

from __future__ import annotations

import json
import time
from collections import Counter

from kits.contract import decode
from tests.conftest import publisher, start_fleet, wait_until
from tests.device.firmware import Device, firmware  # noqa: F401 - fixture
from tests.device.mpy import run_mpy

SCANNER = "demo-scanner-1"
TREE = f"popkit/v1/demo/{SCANNER}"
ACCEPT_S = 5.0  # the requirement: a silent gap is filled within 5 s of appearing


def scanner(firmware, broker, flash, first, last, pace_ms, resend_ms) -> Device:
    """tests/device/scripts/scanner.py: check-ins first..last every pace_ms, no telemetry."""
    return Device(firmware, "scanner.py", "127.0.0.1", broker.port, flash, first, last, pace_ms, 0, resend_ms)


def test_a_gap_request_resends_just_the_entries_it_names_at_once(broker, collect, firmware, tmp_path):
    seen = collect(f"{TREE}/event")
    dev = scanner(firmware, broker, tmp_path / "flash", 1, 5, 5, 60_000)  # its own timeout: a minute
    boot = dev.expect(r"BOOT (\w+)").group(1)
    wait_until(lambda: len(seen.on("/event")) == 5, 10, what="the five check-ins sent")
    pub = publisher(broker.url)
    try:  # what the fleet sends when 3 never came though 4 and 5 did
        asked = {"boot": boot, "seqs": [[1, 2], [4, 5]], "missing": [[3, 3]], "ts": int(time.time() * 1000)}
        t0 = time.monotonic()
        pub.publish(f"{TREE}/receipt", json.dumps(asked), qos=1).wait_for_publish(5)
        wait_until(lambda: len(seen.on("/event")) == 6, ACCEPT_S, what="seq 3 sent again")
        print(f"\nfirmware resent seq 3 {time.monotonic() - t0:.2f}s after the gap request")
        dev.expect(r"OUTBOX 1")  # 1, 2, 4, 5 receipted; 3 waits for its own
        time.sleep(0.5)
        assert Counter(decode("event", p).seq for p in seen.on("/event")) == {1: 1, 2: 1, 3: 2, 4: 1, 5: 1}
        receipt = {"boot": boot, "seqs": [[3, 3]], "ts": int(time.time() * 1000)}
        pub.publish(f"{TREE}/receipt", json.dumps(receipt), qos=1).wait_for_publish(5)
        dev.expect(r"DRAINED", timeout=5)
    finally:
        pub.disconnect()
        pub.loop_stop()
        dev.kill()


def test_checkins_lost_on_the_way_reach_the_fleet_within_5s_of_the_gap(broker, firmware, tmp_path):
    """The scanner's first check-ins reach the broker while no fleet listens (they are lost there);
    once the fleet is back, the next one shows the hole, and the fleet asks the scanner for it."""
    flash = tmp_path / "flash"
    dev = scanner(firmware, broker, flash, 1, 8, 700, 60_000)
    dev.expect(r"EMIT 3 ", timeout=10)
    dev.expect(r"OUTBOX 3", timeout=10)  # 1-3 published (to nobody) and still owed
    fleet = start_fleet(broker.url, f"sqlite:///{tmp_path / 'fleet.db'}")
    try:
        dev.expect(r"DRAINED", timeout=30)
        with fleet.store.engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT seq, received_ms FROM events WHERE device_id = ? ORDER BY seq",
                                        (SCANNER,)).all()
        assert [s for s, _ in rows] == list(range(1, 9)), "every check-in stored once"
        received = dict(rows)
        # Seq 1 came late, so the first row the fleet stored had a hole below it: the gap appeared then.
        first = min(received, key=received.get)
        lost = [s for s in received if s < first]
        gap_s = (max(received[s] for s in lost) - received[first]) / 1000
        print(f"\nfirmware gap (seqs {lost[0]}-{lost[-1]}) filled {gap_s:.2f}s after seq {first} showed it; "
              f"{fleet.ingest.metrics.nacks} gap request(s)")
        assert lost[:3] == [1, 2, 3] and gap_s < ACCEPT_S
        assert fleet.ingest.metrics.nacks >= 1
    finally:
        dev.kill()
        fleet.ingest.stop()
        fleet.store.close()


def test_overdue_rounds_wait_twice_as_long_each_time_until_a_receipt(broker, firmware, tmp_path):
    """No fleet: each round of resends that no receipt answered doubles the wait for the next one."""
    out = run_mpy(f"""
import asyncio, board, link
lk = link.Link("demo", {SCANNER!r}, "scanner", lambda: board.connect_tcp("127.0.0.1", {broker.port}), board.epoch_ms,
               {str(tmp_path / 'flash')!r}, resend_ms=500, keepalive=5, response_ms=1500, backoff_ms=200, backoff_max_ms=1000)

async def main():
    lk.start()
    lk.emit("event", "checkin", {{"data": {{"event": "DEMO-1", "ticket": "T00001", "verdict": "admitted"}}}})
    shown = 0
    while shown < 4:
        if lk.rounds != shown:
            shown = lk.rounds
            print("ROUND", shown, lk.overdue_ms)
        await asyncio.sleep_ms(10)
    # Any receipt says the fleet answers again: this one, published by the device to itself, names nothing.
    await lk.mqtt.publish(b"{TREE}/receipt", b'{{"boot":"%s","seqs":[],"ts":1}}' % lk.boot, False, 1)
    while lk.overdue_ms != 500:
        await asyncio.sleep_ms(10)
    print("ANSWERED", lk.overdue_ms, lk.outbox.count)

asyncio.run(main())
""", firmware, timeout=60).stdout.splitlines()
    assert [line for line in out if line.startswith(("ROUND", "ANSWERED"))] == [
        "ROUND 1 500",  # the session's first round
        "ROUND 2 1000", "ROUND 3 2000", "ROUND 4 4000",  # overdue, overdue, overdue: each waits twice as long
        "ANSWERED 500 1",  # a receipt: back to resend_ms (the check-in itself still owed)
    ]
