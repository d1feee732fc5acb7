"""The BLE-lamp contract, run against every backend: the real BleLamp driver over

- ``sim``: bleak with the in-process simulated backend (simulators/lamp.py), real frames;
- ``hardware``: bleak's platform backend and an ELK-BLEDOM lamp at ``POPKIT_LAMP_ADDRESS``
  (skipped when unset). The lamp is write-only, so on hardware the test checks that every
  write is acknowledged; a person watching sees it blink and change colour.

Breaking the lamp (vanish, power cycle) is simulator-only. Waits are bounded by asyncio timeouts.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from agent.drivers.ble import Backoff
from agent.drivers.lamp import LampUnreachable, ble_lamp
from agent.errors import DriverError
from kits.contract import LightTelemetry
from kits.manifest import Expectations
from simulators.ble import SimulatedRadio
from simulators.lamp import SimulatedElkLamp, simulated_lamp

HARDWARE_ADDRESS = os.environ.get("POPKIT_LAMP_ADDRESS")


def run(coro, bound: float = 10.0):
    async def bounded():
        async with asyncio.timeout(bound):
            return await coro
    return asyncio.run(bounded())


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Rig:
    def __init__(self, kind: str) -> None:
        self.clock = Clock()
        self.states: list[bool] = []
        if kind == "hardware":
            self.sim: SimulatedElkLamp | None = None
            address, backend = HARDWARE_ADDRESS, None
        else:
            backend, self.sim = simulated_lamp("BE:16:02:00:11:01")
            address = self.sim.address
        self.lamp = ble_lamp(address, backend=backend, connect_timeout=1.0 if kind == "sim" else 20.0,
                             backoff=Backoff(first=5.0), clock=self.clock,
                             on_state=lambda up, why: self.states.append(up))


@pytest.fixture(params=["sim", "hardware"])
def rig(request) -> Rig:
    if request.param == "hardware" and not HARDWARE_ADDRESS:
        pytest.skip("no ELK-BLEDOM lamp in range (set POPKIT_LAMP_ADDRESS=AA:BB:CC:DD:EE:FF)")
    return Rig(request.param)


@pytest.fixture
def sim() -> Rig:
    return Rig("sim")


# -- every backend ------------------------------------------------------------------------------


def test_commands_set_the_lamp_and_its_reported_state(rig: Rig) -> None:
    async def scenario():
        await rig.lamp.rgb(255, 160, 60)
        await rig.lamp.level(128)
        await rig.lamp.on()
        await rig.lamp.close()
    run(scenario())
    msg = LightTelemetry(boot="00ff", seq=1, ts=1, **rig.lamp.telemetry_fields())
    assert (msg.on, msg.level, msg.rgb) == (True, 128, (255, 160, 60))
    if rig.sim is not None:
        assert rig.sim.shows == (128, 80, 30)
        assert rig.sim.frames_bad == 0


def test_flash_identifies_and_leaves_the_lamp_as_set(rig: Rig) -> None:
    async def scenario():
        await rig.lamp.off()
        await rig.lamp.flash(times=2, period=0.02)
    run(scenario())
    if rig.sim is not None:
        # off; then two blinks; then off again, as the crew left it
        assert [on for on, _ in rig.sim.history] == [False, False, True, False, True, False]


def test_self_test_of_a_reachable_lamp_finds_nothing(rig: Rig) -> None:
    assert run(rig.lamp.self_test("lr-lamp-1")) == []


# -- the simulator --------------------------------------------------------------------------------------


def test_state_is_reapplied_after_the_lamp_was_power_cycled_out_of_range(sim: Rig) -> None:
    async def scenario():
        await sim.lamp.rgb(0, 0, 255)
        await sim.lamp.level(255)
        await sim.lamp.on()
        sim.sim.vanish()
        sim.sim.power_cycle()  # back to its own default: white, full
        with pytest.raises(LampUnreachable):
            await sim.lamp.level(51)  # the crew dims it while it is away
        assert sim.sim.shows == (255, 255, 255)
        sim.sim.come_back()
        sim.clock.t += 5
        await sim.lamp.refresh()
    run(scenario())
    assert sim.sim.shows == (0, 0, 51)  # blue at 20 %: what the crew set, including while away
    assert sim.states == [True, False, True]


def test_a_command_after_reconnect_sends_the_whole_state_once(sim: Rig) -> None:
    async def scenario():
        await sim.lamp.rgb(10, 20, 30)
        await sim.lamp.on()
        sim.sim.vanish()
        sim.sim.come_back()
        sim.clock.t += 5
        before = len(sim.sim.writes)
        await sim.lamp.off()
        return sim.sim.writes[before:]
    writes = run(scenario())
    assert [w[2] for _, w in writes] == [0x05, 0x04]  # colour, then power (now off): no duplicate
    assert sim.sim.is_on is False and sim.sim.rgb == (10, 20, 30)


def test_unreachable_lamp_fails_fast_within_backoff_and_never_raises_anything_else(sim: Rig) -> None:
    async def scenario():
        sim.sim.vanish()
        errors = []
        for command in (sim.lamp.on(), sim.lamp.off(), sim.lamp.rgb(1, 2, 3), sim.lamp.flash(period=0)):
            try:
                await command
            except DriverError as exc:
                errors.append(exc)
        return errors
    errors = run(scenario())
    assert len(errors) == 4 and all(isinstance(e, LampUnreachable) for e in errors)
    assert "next try in 5s" in str(errors[-1])
    assert sim.sim.failed_connects == 1


def test_a_connect_that_hangs_is_cut_off(sim: Rig) -> None:
    sim.sim.connect_delay = 30.0
    with pytest.raises(LampUnreachable, match="no answer within 1s"):
        run(sim.lamp.on(), bound=5.0)


def test_self_test_of_an_unreachable_lamp_says_what_to_check(sim: Rig) -> None:
    sim.sim.vanish()
    [problem] = run(sim.lamp.self_test("lr-lamp-1"))
    assert str(problem) == "lr-lamp-1: lamp not reachable over Bluetooth, check it is powered and within range"
    assert problem.severity == "warning"


def test_unreachable_safety_lamp_is_a_fault(sim: Rig) -> None:
    sim.sim.vanish()
    [problem] = run(sim.lamp.self_test("lr-flood", Expectations(safety=True)))
    assert problem.severity == "fault"


def test_two_lamps_on_one_radio_are_driven_separately() -> None:
    radio = SimulatedRadio()
    backend, a = simulated_lamp("BE:16:02:00:11:01", radio=radio)
    _, b = simulated_lamp("BE:16:02:00:11:02", radio=radio)

    async def scenario():
        await ble_lamp(a.address, backend=backend).rgb(255, 0, 0)
        await ble_lamp(b.address, backend=backend).off()
    run(scenario())
    assert (a.shows, b.shows) == ((255, 0, 0), (0, 0, 0))
