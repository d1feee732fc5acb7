"""The overview and kit pages served from kept views (fleet/views/cache.py): pages, filters and search
by the fleet, every view in the shape the OpenAPI promises, and never stale after a change."""

from __future__ import annotations

import threading
import time

import pytest
from fleet.auth.testing import ops_client

from fleet.api.app import create_app
from fleet.api.schemas import KitOut, KitPageOut
from fleet.health import HealthConfig
from fleet.views.cache import KitViews
from fleet.ledger import Batch, LedgerMessage
from fleet.store import Store
from kits.contract import BatteryTelemetry, DeviceTelemetry, State, encode
from kits.manifest import parse_manifest
from tests.conftest import wait_until

KITS = 12


def manifest(n: int):
    return parse_manifest(
        f'id = "k{n:02d}"\nname = "{"Night market" if n % 3 == 0 else "Listening room"} {n}"\nagent = "k{n:02d}-agent"\n'
        f'[[devices]]\nid = "k{n:02d}-power"\nrole = "powerbank"\nbus = "serial:/dev/ttyUSB0"\n'
        f'[[devices]]\nid = "k{n:02d}-door"\nrole = "scanner"\n')


def state(device: str, role: str, online: bool = True, ts: int = 1) -> tuple[str, State]:
    return device, State(boot="b001", seq=0, ts=ts, online=online, role=role, reason="birth" if online else "lwt")


def battery(device: str, seq: int, soc: float) -> LedgerMessage:
    msg = BatteryTelemetry(boot="b001", seq=seq, ts=int(time.time() * 1000), source="vedirect", v=12.5, i=-2.0, soc=soc)
    return LedgerMessage(device, "telemetry", msg, encode(msg).decode())


def beat(device: str, seq: int) -> LedgerMessage:
    msg = DeviceTelemetry(boot="b001", seq=seq, ts=int(time.time() * 1000), uptime_s=seq)
    return LedgerMessage(device, "telemetry", msg, encode(msg).decode())


@pytest.fixture
def fleet(tmp_path):
    """12 kits: k00..k03 all online, k04..k07 only their agent (degraded), k08.. never heard from."""
    store = Store.open(f"sqlite:///{tmp_path / 'views.db'}")
    for n in range(KITS):
        store.registry.register_kit(manifest(n))
    states, ledger = [], []
    for n in range(8):
        states.append(state(f"k{n:02d}-agent", "agent"))
        if n < 4:
            states += [state(f"k{n:02d}-power", "powerbank"), state(f"k{n:02d}-door", "scanner")]
            ledger += [battery(f"k{n:02d}-power", 1, 80.0 - n), beat(f"k{n:02d}-door", 1)]
    store.ledger.write_batch(Batch(ledger=ledger, states=states))
    yield store
    store.close()


def test_the_overview_is_paged_filtered_and_searched_by_the_fleet(fleet):
    api = ops_client(create_app(fleet))
    first = api.get("/api/v1/kits", params={"limit": 5}).json()
    assert [k["id"] for k in first["items"]] == ["k00", "k01", "k02", "k03", "k04"]
    assert (first["total"], first["offset"], first["next_offset"]) == (KITS, 0, 5)
    assert first["fleet"]["state"] == {"online": 4, "degraded": 4, "offline": 4}
    rest = api.get("/api/v1/kits", params={"limit": 5, "offset": 5}).json()
    last = api.get("/api/v1/kits", params={"limit": 5, "offset": 10}).json()
    ids = [k["id"] for page in (first, rest, last) for k in page["items"]]
    assert ids == [f"k{n:02d}" for n in range(KITS)] and last["next_offset"] is None

    online = api.get("/api/v1/kits", params={"state": "online"}).json()
    assert [k["id"] for k in online["items"]] == ["k00", "k01", "k02", "k03"] and online["total"] == 4
    assert all(k["state"] == "online" and k["devices_online"] == 3 for k in online["items"])
    # Every word must match: the kit's name, or a device's id, role or model.
    market = api.get("/api/v1/kits", params={"q": "NIGHT k0"}).json()
    assert [k["id"] for k in market["items"]] == ["k00", "k03", "k06", "k09"]
    assert api.get("/api/v1/kits", params={"q": "k05-door"}).json()["total"] == 1
    assert api.get("/api/v1/kits", params={"q": "no such thing"}).json()["items"] == []
    # Worst first: never-heard-from kits (unknown) rank below offline ones, above healthy ones.
    worst = [k["health"]["status"] for k in api.get("/api/v1/kits", params={"sort": "health"}).json()["items"]]
    assert worst == sorted(worst, key=["ok", "unknown", "degraded", "silent", "offline"].index, reverse=True)

    chip = online["items"][0]["devices"][0]
    assert set(chip) == {"id", "role", "model", "online", "status", "last_seen_ms", "clock"}


def test_bad_list_parameters_are_refused_with_the_reason(fleet):
    api = ops_client(create_app(fleet))
    for params, word in (({"limit": 0}, "limit"), ({"limit": 1001}, "limit"), ({"offset": -1}, "offset"),
                         ({"state": "sideways"}, "state"), ({"status": "fine"}, "status"), ({"sort": "size"}, "sort")):
        r = api.get("/api/v1/kits", params=params)
        assert r.status_code == 422 and word in r.text, params


def test_every_served_view_is_what_the_openapi_promises(fleet):
    api = ops_client(create_app(fleet))
    page = api.get("/api/v1/kits", params={"limit": 1000}).json()
    KitPageOut.model_validate(page)
    for kit in page["items"]:
        full = api.get(f"/api/v1/kits/{kit['id']}").json()
        KitOut.model_validate(full)
        assert {k: full[k] for k in ("health", "readiness", "batteries", "devices_online")} == \
               {k: kit[k] for k in ("health", "readiness", "batteries", "devices_online")}
    # Served from the kept views, the bytes are what the store's view encodes to, nothing lost.
    again = api.get("/api/v1/kits/k00").json()
    view = fleet.health.kits_with_health(HealthConfig(), kit_id="k00")[0]
    assert [d["id"] for d in again["devices"]] == [d["id"] for d in view["devices"]]
    assert again["battery"] == view["battery"] and again["devices"][1]["latest"] == view["devices"][1]["latest"]


def test_a_write_shows_at_once_on_the_kit_page_and_in_the_list(fleet):
    api = ops_client(create_app(fleet))
    assert api.get("/api/v1/kits/k00").json()["devices_online"] == 3
    assert api.get("/api/v1/kits", params={"state": "online"}).json()["total"] == 4
    fleet.ledger.write_batch(Batch(states=[state("k00-door", "scanner", online=False, ts=2)]))
    assert api.get("/api/v1/kits/k00").json()["devices_online"] == 2
    assert api.get("/api/v1/kits", params={"state": "online"}).json()["total"] == 3
    # A new kit is listed, and a pushed config (not yet applied) shows on the device it is for.
    fleet.registry.register_kit(manifest(99))
    assert api.get("/api/v1/kits", params={"q": "k99"}).json()["total"] == 1
    fleet.config.update(["k01-door"], lambda _cur: {"volume": 3})
    door = next(d for d in api.get("/api/v1/kits/k01").json()["devices"] if d["id"] == "k01-door")
    assert door["config_version"] is None  # desired 1, applied none: config_behind after the grace period
    assert api.get("/api/v1/kits/nope").status_code == 404


def test_with_the_refresher_running_the_list_follows_writes_within_moments(fleet):
    app = create_app(fleet)
    with ops_client(app) as api:  # the lifespan starts the refresher thread
        views: KitViews = app.state.views
        wait_until(lambda: views.stats.full_passes >= 1, what="the first full pass")
        assert api.get("/api/v1/kits", params={"state": "offline"}).json()["total"] == 4
        fleet.ledger.write_batch(Batch(states=[state("k08-agent", "agent")]))
        wait_until(lambda: api.get("/api/v1/kits", params={"state": "offline"}).json()["total"] == 3,
                   timeout=5, what="the list to count k08 as no longer offline")
        assert views.stats.dirty_passes >= 1
    assert views._thread is None  # stopped with the app


def test_a_change_during_a_computation_leaves_the_kit_to_compute_again(fleet):
    """A commit can land after a computation read the database and before it stored its result:
    the kit stays dirty, and the next read computes it again (the dashboard never keeps the old state)."""
    views = KitViews(fleet, HealthConfig())
    fleet.changes.listeners.append(lambda kits, _d: views.invalidate(kits))
    views.refresh_all()
    compute = fleet.health.kits_with_health
    raced = threading.Event()

    def racing(*args, **kwargs):
        out = compute(*args, **kwargs)
        if not raced.is_set():  # the commit lands just after this computation's reads
            raced.set()
            fleet.ledger.write_batch(Batch(states=[state("k01-door", "scanner", online=False, ts=3)]))
        return out

    fleet.health.kits_with_health = racing
    fleet.ledger.write_batch(Batch(states=[state("k01-power", "powerbank", online=False, ts=3)]))
    import json
    first = json.loads(views.get("k01"))
    assert first["devices_online"] == 2 and raced.is_set()  # computed before the door's commit
    second = json.loads(views.get("k01"))
    assert second["devices_online"] == 1  # the door's commit made it compute again


def test_health_that_moves_with_the_clock_alone_shows_after_a_full_pass(fleet):
    now = [int(time.time() * 1000)]
    views = KitViews(fleet, HealthConfig(heartbeat_timeout_s=90), refresh_s=10, max_age_s=60, clock=lambda: now[0])
    views.refresh_all()
    import json
    door = lambda: next(d for d in json.loads(views.get("k00"))["devices"] if d["id"] == "k00-door")  # noqa: E731
    assert door()["health"]["status"] == "ok"
    now[0] += 120_000  # two minutes without a message: silent, though no write says so
    assert door()["health"]["status"] == "silent"  # older than max_age_s: recomputed on read
    now[0] += 5_000
    views.refresh_all()
    assert json.loads(views.page(status="silent"))["total"] >= 4
