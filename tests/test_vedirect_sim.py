"""The VE.Direct simulator's discharge model, read through the real driver on its pty.

The simulator's clock is driven by hand (``on_tick(now)`` with chosen times, no thread), so
every number is exact: SOC falls by I*t over the capacity, TTG follows from SOC and current.
"""

from __future__ import annotations

import pytest

from agent.drivers.vedirect import BatteryReading, VEDirectReader
from simulators.vedirect import VEDirectSimulator


@pytest.fixture
def bmv():
    sim = VEDirectSimulator(capacity_ah=100.0, soc=0.9)
    reader = VEDirectReader.open(sim.path)
    yield sim, reader
    reader.close()
    sim.stop()


def at(rig, now: float) -> BatteryReading:
    """Let the simulator send one block pair at time ``now``; read it with the real driver."""
    sim, reader = rig
    sim.on_tick(now)
    return reader.read_reading(timeout=2.0)


def test_idle_pack_holds_its_charge_and_has_infinite_time_to_go(bmv) -> None:
    first, later = at(bmv, 0.0), at(bmv, 3600.0)
    assert first == later
    assert (later.i, later.soc, later.ttg, later.alarm) == (0.0, 90.0, -1, None)


def test_an_hour_at_10_a_takes_10_ah_from_a_100_ah_pack(bmv) -> None:
    sim, _ = bmv
    idle = at(bmv, 0.0)
    sim.set_load(10.0)
    loaded = at(bmv, 0.0)
    hour = at(bmv, 3600.0)
    assert loaded.soc == 90.0 and hour.soc == 80.0
    assert hour.i == -10.0 and hour.p == pytest.approx(hour.v * hour.i, abs=1)
    assert loaded.v < idle.v  # the load sags the voltage at once
    assert hour.v < loaded.v  # and it falls further as the charge goes
    # TTG: 80 Ah left at 10 A is 8 h.
    assert (loaded.ttg, hour.ttg) == (540, 480)


def test_time_to_go_follows_the_load(bmv) -> None:
    sim, _ = bmv
    for amps, minutes in ((5.0, 1080), (20.0, 270), (90.0, 60)):
        sim.set_load(amps)
        assert at(bmv, 0.0).ttg == minutes


def test_charging_raises_soc_and_stops_at_full(bmv) -> None:
    sim, _ = bmv
    at(bmv, 0.0)
    sim.set_load(-20.0)
    charging = at(bmv, 1800.0)  # half an hour at 20 A: +10 Ah
    assert (charging.i, charging.soc, charging.ttg) == (20.0, 100.0, -1)
    assert at(bmv, 7200.0).soc == 100.0


def test_running_flat_raises_the_low_soc_alarm_and_stops_at_empty(bmv) -> None:
    sim, _ = bmv
    at(bmv, 0.0)
    sim.set_load(50.0)
    nearly = at(bmv, 3600 * 1.7)  # 85 Ah gone: 5 % left
    assert nearly.soc == 5.0 and nearly.alarm == "low_soc" and nearly.ttg == 6
    flat = at(bmv, 3600 * 3.0)
    assert (flat.soc, flat.ttg) == (0.0, 0)
