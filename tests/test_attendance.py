"""Door check-in at the fleet: attendance per event and scanner, double entries with both scans."""

from __future__ import annotations

from agent.link import FleetLink
from kits.contract import Event
from tests.conftest import wait_until

SCAN_T0 = 1_795_000_000_000


def scan(link: FleetLink, ticket: str, verdict: str, ts: int, hub_checked: bool = True, event: str = "NIGHT-1") -> None:
    link.emit(link.device, "event", Event, ts=ts, kind="checkin",
              data={"event": event, "ticket": ticket, "tier": "GA", "verdict": verdict, "hub_checked": hub_checked})


def test_attendance_counts_scanners_and_flags_a_ticket_admitted_twice(fleet, broker, tmp_path):
    door_a = FleetLink("demo", "demo-scanner-1", "scanner", broker.url, tmp_path / "a.db").start()
    door_b = FleetLink("demo", "demo-lights-1", "scanner", broker.url, tmp_path / "b.db").start()  # a 2nd registered device
    try:
        for n in range(10):
            scan(door_a, f"T{n}", "admitted", SCAN_T0 + n * 1000)
        scan(door_a, "T3", "already_admitted", SCAN_T0 + 20_000)
        scan(door_a, "FAKE1", "bad_signature", SCAN_T0 + 21_000)
        # Door B lost the hub, admitted T5 locally; it uploads an hour later, keeping the scan time.
        scan(door_b, "T5", "admitted", SCAN_T0 + 30_000, hub_checked=False)
        scan(door_b, "T10", "admitted", SCAN_T0 + 31_000)
        scan(door_b, "X1", "admitted", SCAN_T0 + 32_000, event="OTHER-NIGHT")
        fleet.wait_ingested(15)

        att = fleet.api.get("/api/v1/events/NIGHT-1/attendance").json()
        assert att["admitted"] == 11 and att["scans"] == 14
        assert att["by_verdict"] == {"admitted": 12, "already_admitted": 1, "bad_signature": 1}
        assert att["by_scanner"] == {"demo-scanner-1": {"admitted": 10, "refused": 2},
                                     "demo-lights-1": {"admitted": 2, "refused": 0}}
        [double] = att["double_entries"]
        assert double["ticket"] == "T5"
        assert double["scans"] == [
            {"device_id": "demo-scanner-1", "scan_ms": SCAN_T0 + 5000, "hub_checked": True},
            {"device_id": "demo-lights-1", "scan_ms": SCAN_T0 + 30_000, "hub_checked": False},
        ]
        assert fleet.api.get("/api/v1/events/OTHER-NIGHT/attendance").json()["admitted"] == 1
    finally:
        door_a.stop()
        door_b.stop()


def test_a_resent_checkin_counts_once(fleet, broker):
    from kits.contract import encode
    from tests.conftest import publisher

    payload = encode(Event(boot="dd01", seq=1, ts=SCAN_T0, kind="checkin",
                           data={"event": "NIGHT-2", "ticket": "T1", "verdict": "admitted"}))
    pub = publisher(broker.url)
    for _ in range(3):
        pub.publish("popkit/v1/demo/demo-scanner-1/event", payload, qos=1).wait_for_publish(5)
    wait_until(lambda: fleet.ingest.metrics.duplicates == 2, what="two resends recognised")
    att = fleet.api.get("/api/v1/events/NIGHT-2/attendance").json()
    assert att["scans"] == 1 and att["double_entries"] == []
    pub.loop_stop()


def test_attendance_of_an_unknown_event_is_404_and_a_bad_id_422(fleet):
    r = fleet.api.get("/api/v1/events/NEVER-HELD/attendance")
    assert r.status_code == 404 and "NEVER-HELD" in r.json()["detail"]
    assert fleet.api.get("/api/v1/events/Bad%20Id/attendance").status_code == 422


def test_a_checkin_without_a_verdict_is_rejected_naming_the_field(fleet, broker):
    from tests.conftest import publisher

    pub = publisher(broker.url)
    pub.publish("popkit/v1/demo/demo-scanner-1/event",
                b'{"boot":"dd02","seq":1,"ts":1,"kind":"checkin","data":{"ticket":"T1"}}', qos=1).wait_for_publish(5)
    wait_until(lambda: fleet.ingest.metrics.rejected["invalid"] == 1, what="invalid check-in rejected")
    assert "verdict" in fleet.api.get("/api/v1/dead-letters").json()[0]["detail"]
    pub.loop_stop()


def test_a_kits_recent_checkins_newest_scan_first_and_unknown_kit_404(fleet, broker, tmp_path):
    door = FleetLink("demo", "demo-scanner-1", "scanner", broker.url, tmp_path / "door.db").start()
    try:
        for n in range(5):
            scan(door, f"R{n}", "admitted", SCAN_T0 + n * 1000, event="NIGHT-3")
        scan(door, "R0", "already_admitted", SCAN_T0 + 9000, event="NIGHT-3")
        scan(door, "R9", "admitted", SCAN_T0 - 60_000, event="NIGHT-3")  # uploaded late, scanned first
        wait_until(lambda: len(fleet.api.get("/api/v1/kits/demo/checkins").json()) == 7, what="7 check-ins")
    finally:
        door.stop()
    rows = fleet.api.get("/api/v1/kits/demo/checkins?limit=3").json()
    assert [(r["ticket"], r["verdict"]) for r in rows] == [("R0", "already_admitted"), ("R4", "admitted"),
                                                          ("R3", "admitted")]
    assert rows[0]["scan_ms"] == SCAN_T0 + 9000 and rows[0]["device_id"] == "demo-scanner-1"
    every = fleet.api.get("/api/v1/kits/demo/checkins").json()
    assert every[-1]["ticket"] == "R9"  # arrived last, scanned first: its scan time places it
    assert fleet.api.get("/api/v1/kits/no-such-kit/checkins").status_code == 404
    assert fleet.api.get("/api/v1/kits/demo/checkins?limit=0").status_code == 422
