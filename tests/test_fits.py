"""A pack's forecast kept between the fleet's passes over every kit (fleet/fits.py), on a real SQLite store:
refit when it may have moved, never served stale across a change of charging, exact on a kit's own page."""

from __future__ import annotations

import pytest

from fleet.health import HealthConfig
from fleet.ledger import Batch, LedgerMessage
from fleet.store import Store
from kits.contract import BatteryTelemetry, encode
from kits.manifest import load_manifest
from tests.conftest import REPO

CFG = HealthConfig(forecast_refit_s=30)
T0 = 1_800_000_000_000
BOOT = "f17ca5e0"


@pytest.fixture
def store(tmp_path):
    s = Store.open(f"sqlite:///{tmp_path / 'fleet.db'}")
    s.registry.register_kit(load_manifest(REPO / "kits/examples/demo.toml"))
    yield s
    s.close()


def readings(store: Store, seqs: range, soc_at, i: float = -4.0) -> None:
    """Battery readings of demo-power, one every 5 s from T0, state of charge soc_at(seq)."""
    ledger = []
    for seq in seqs:
        msg = BatteryTelemetry(boot=BOOT, seq=seq, ts=T0 + seq * 5000, source="sim", v=12.8, i=i, soc=soc_at(seq))
        ledger.append(LedgerMessage("demo-power", "telemetry", msg, encode(msg).decode()))
    store.ledger.write_batch(Batch(ledger=ledger), received_ms=T0 + seqs[-1] * 5000)


def pack(store: Store, now: int, kit_id: str | None = None) -> dict:
    kit = store.health.kits_with_health(CFG, kit_id=kit_id, now=now)[0]
    return next(b for b in kit["batteries"] if b["device_id"] == "demo-power")


def test_a_pass_refits_a_pack_only_once_its_fit_is_old_or_its_charging_changed(store):
    readings(store, range(1, 61), lambda s: 80 - s * 0.02)  # 5 minutes at 14.4 %/h
    now = T0 + 61 * 5000
    first = pack(store, now)
    assert first["method"] == "soc_slope" and 4.9 < first["hours_left"] < 5.7, first
    assert store.health.fits.fitted == 1

    # A new reading 10 s later, twice as steep: the kept fit stands for refit_s ...
    readings(store, range(61, 63), lambda s: 80 - s * 0.04)
    kept = pack(store, now + 10_000)
    assert store.health.fits.fitted == 1 and store.health.fits.reused == 1
    assert kept["hours_left"] == first["hours_left"] and kept["ts"] == T0 + 62 * 5000  # the latest reading is fresh
    # ... and is refit once the fit is refit_s old.
    readings(store, range(63, 80), lambda s: 80 - s * 0.04)
    pack(store, now + 31_000)
    assert store.health.fits.fitted == 2

    # On charge: refit at once, whatever the fit's age.
    readings(store, range(80, 81), lambda s: 78.0, i=+12.0)
    charging = pack(store, now + 33_000)
    assert store.health.fits.fitted == 3 and charging["hours_left"] is None and charging["reason"] == "charging"


def test_nothing_new_is_no_refit_however_old_and_a_kits_own_page_always_refits(store):
    readings(store, range(1, 61), lambda s: 80 - s * 0.02)
    now = T0 + 61 * 5000
    pack(store, now)
    pack(store, now + 3_600_000)  # an hour on, no reading since: the same readings, the same fit
    assert store.health.fits.fitted == 1
    # The event's verdict uses the clock, not the kept fit: hours_left is from the latest reading.
    readings(store, range(61, 62), lambda s: 80 - s * 0.02)
    pack(store, now + 3_600_000, kit_id="demo")
    pack(store, now + 3_600_001, kit_id="demo")
    assert store.health.fits.fitted == 3
    dev = store.health.device_with_health("demo-power", CFG, now=now + 3_600_002)
    assert dev["battery_forecast"]["method"] == "soc_slope" and store.health.fits.fitted == 4


def test_a_pack_gone_from_the_fleet_is_forgotten(store):
    readings(store, range(1, 61), lambda s: 80 - s * 0.02)
    pack(store, T0 + 61 * 5000)
    assert store.health.fits.kept("demo-power") is not None
    store.health.fits.keep_only(set())
    assert store.health.fits.kept("demo-power") is None
    assert pack(store, T0 + 62 * 5000)["method"] == "soc_slope" and store.health.fits.fitted == 2
