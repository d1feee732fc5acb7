"""The ``double_entry`` alert (fleet/alerts/rules.py): a ticket two doors both let in is raised on the
kit, with both scans, counted up when another comes, and back to normal once the night's window has
passed. Check-ins arrive through the real ingest (tests/test_alerts.py's simulated kit) into the
fleet on SQLite and on PostgreSQL; the evaluator runs with a chosen "now"."""

from __future__ import annotations

import pytest

from fleet.alerts import AlertConfig, evaluate
from fleet.auth.testing import client_as
from tests.conftest import start_fleet
from tests.test_alerts import alerts, now_ms, sim  # noqa: F401 - the fixture

CFG = AlertConfig(double_entry_window_s=3600)
HOUR = 3_600_000


@pytest.fixture(params=["sqlite", "postgresql"])
def fleet(request, broker, tmp_path):
    """The fleet on SQLite and on PostgreSQL: the double-entry query runs on both."""
    url = f"sqlite:///{tmp_path / 'fleet.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    f = start_fleet(broker.url, url)
    yield f
    f.ingest.stop()
    f.store.close()


def admitted(sim, device: str, ticket: str, ts: int, hub_checked: bool = False) -> None:  # noqa: F811
    sim.event(device, "checkin", {"event": "NIGHT-1", "ticket": ticket, "verdict": "admitted",
                                  "hub_checked": hub_checked}, ts=ts)


def test_a_ticket_let_in_twice_raises_one_kit_alert_with_both_scans_and_counts_the_next(fleet, sim):  # noqa: F811
    t = now_ms()
    admitted(sim, "demo-scanner-1", "T1", t - 5000, hub_checked=True)
    # A refusal of the same ticket is the door working: no double entry.
    sim.event("demo-scanner-1", "checkin", {"event": "NIGHT-1", "ticket": "T1", "verdict": "already_admitted"}, ts=t - 4000)
    evaluate(fleet.store, t, CFG)
    assert alerts(fleet, rule="double_entry") == []

    # Rebooted with its flash wiped and no hub: the door lets T1 in again.
    sim.boot = "b0b0b0"
    admitted(sim, "demo-scanner-1", "T1", t - 1000)
    evaluate(fleet.store, t, CFG)
    [a] = alerts(fleet, rule="double_entry")
    assert (a["subject"], a["kit_id"], a["severity"], a["state"], a["count"]) == ("demo", "demo", "warning", "open", 1)
    assert "T1" in a["message"] and "1 ticket admitted twice" in a["message"]
    [d] = a["details"]["doubles"]
    assert (d["event"], d["ticket"]) == ("NIGHT-1", "T1")
    assert [(s["scan_ms"], s["hub_checked"]) for s in d["scans"]] == [(t - 5000, True), (t - 1000, False)]

    admitted(sim, "demo-scanner-1", "T2", t - 900)
    admitted(sim, "demo-scanner-1", "T2", t - 800)
    evaluate(fleet.store, t + 1000, CFG)
    [a] = alerts(fleet, rule="double_entry")
    assert a["count"] == 2 and "2 tickets admitted twice" in a["message"]
    assert sorted(d["ticket"] for d in a["details"]["doubles"]) == ["T1", "T2"]

    # The crew of another kit does not see it; the kit's crew does.
    assert client_as(fleet.api.app, "crew-x", "crew", kits=["other"]).get("/api/v1/alerts?rule=double_entry").json()["items"] == []
    mine = client_as(fleet.api.app, "crew-d", "crew", kits=["demo"]).get("/api/v1/alerts?rule=double_entry").json()["items"]
    assert [x["id"] for x in mine] == [a["id"]]

    # Past the window (the night is over), it resolves by itself.
    evaluate(fleet.store, t + 2 * HOUR, CFG)
    [a] = alerts(fleet, rule="double_entry")
    assert a["state"] == "resolved" and a["resolved_by"] == "auto"
