"""The kit-up history (``GET /api/v1/kits/{kit}/readiness``, fleet/views/kitup.py): every self-test the
kit's agent reported, newest first, each problem with its fix, paged back with ``before``; an
unknown kit is 404 and another crew's kit too. The reports arrive through the real ingest
(tests/test_alerts.py's simulated kit) into the fleet on SQLite and on PostgreSQL."""

from __future__ import annotations

import pytest

from fleet.auth.testing import client_as
from tests.conftest import start_fleet
from tests.test_alerts import now_ms, sim  # noqa: F401 - the fixture

LIGHTS_OFF = {"device": "demo-lights-1", "severity": "fault", "what": "lighting controller demo-lights-1 is not online",
              "fix": "switch it on, bring it in range of the kit's Wi-Fi"}
PAPER = {"device": "demo-printer", "severity": "warning", "what": "paper near its end", "fix": "load a new roll"}


@pytest.fixture(params=["sqlite", "postgresql"])
def fleet(request, broker, tmp_path):
    url = f"sqlite:///{tmp_path / 'fleet.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    f = start_fleet(broker.url, url)
    yield f
    f.ingest.stop()
    f.store.close()


def test_list_readiness_newest_first_with_each_fix_and_paged_back(fleet, sim):  # noqa: F811
    t = now_ms()
    sim.event("demo-agent", "readiness", {"status": "not_ready", "problems": [LIGHTS_OFF, PAPER], "took_ms": 5200}, ts=t - 60_000)
    sim.event("demo-agent", "readiness", {"status": "degraded", "problems": [PAPER], "took_ms": 4100}, ts=t - 30_000)
    sim.event("demo-agent", "readiness", {"status": "ready", "problems": []}, ts=t)
    # Another kind of event from the agent is not a kit-up report.
    sim.event("demo-agent", "summary", {"since": t - 3_600_000, "checkins": 3, "labels_printed": 1}, ts=t + 1)

    r = fleet.api.get("/api/v1/kits/demo/readiness")
    assert r.status_code == 200, r.text
    assert [(x["status"], x["ts"], x["device_id"]) for x in r.json()] == [
        ("ready", t, "demo-agent"), ("degraded", t - 30_000, "demo-agent"), ("not_ready", t - 60_000, "demo-agent")]
    oldest = r.json()[2]
    assert oldest["problems"] == [LIGHTS_OFF, PAPER] and oldest["took_ms"] == 5200

    page = fleet.api.get("/api/v1/kits/demo/readiness", params={"limit": 1, "before": t - 30_000}).json()
    assert [x["status"] for x in page] == ["not_ready"]


def test_list_readiness_unknown_kit_and_another_crews_kit_are_404(fleet, sim):  # noqa: F811
    sim.event("demo-agent", "readiness", {"status": "ready", "problems": []})
    assert fleet.api.get("/api/v1/kits/nope/readiness").status_code == 404
    other = client_as(fleet.api.app, "crew-x", "crew", kits=["other"])
    assert other.get("/api/v1/kits/demo/readiness").status_code == 404
    mine = client_as(fleet.api.app, "crew-d", "crew", kits=["demo"])
    assert [x["status"] for x in mine.get("/api/v1/kits/demo/readiness").json()] == ["ready"]
    assert fleet.api.get("/api/v1/kits/demo/readiness", params={"limit": 0}).status_code == 422
