"""The battery-monitor contract, run against every backend: the real JbdBms driver over

- ``sim``: bleak with the in-process simulated backend (simulators/jbd.py), real wire bytes;
- ``hardware``: bleak's platform backend and a real pack at ``POPKIT_JBD_ADDRESS`` (skipped
  when that is unset, i.e. everywhere but a bench with a pack on it).

Tests that need to break the device (vanish, corrupt, mute) run on the simulator only.
Every wait is bounded by an asyncio timeout; nothing sleeps hoping for a state.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time

import pytest

from agent.drivers.ble import Backoff
from agent.drivers.jbd import (
    REG_BASIC_INFO,
    JbdBms,
    JbdLinkLost,
    JbdTimeout,
    jbd_monitor,
    parse_basic_info,
)
from agent.errors import PowerBankError
from kits.contract import BatteryTelemetry
from kits.manifest import Expectations
from simulators.ble import SimulatedRadio
from simulators.jbd import SimulatedJbdBms, simulated_jbd
from tests.test_jbd import HCI_SP04, hci_notifications, reassemble

HARDWARE_ADDRESS = os.environ.get("POPKIT_JBD_ADDRESS")
BOUND_S = 10.0


def run(coro, bound: float = BOUND_S):
    """Run one scenario with a hard upper bound, so a hang fails instead of stalling the suite."""
    async def bounded():
        async with asyncio.timeout(bound):
            return await coro
    return asyncio.run(bounded())


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Rig:
    """A monitor wired to a backend; ``bms`` is the simulated peripheral (None on hardware)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.clock = Clock()  # drives the driver's backoff
        self.pack_clock = Clock()  # drives the simulated pack's discharge
        self.states: list[tuple[bool, str]] = []
        if kind == "hardware":
            self.bms = None
            address, backend = HARDWARE_ADDRESS, None
        else:
            backend, self.bms = simulated_jbd(soc=0.8, clock=self.pack_clock)
            address = self.bms.address
        self.monitor = jbd_monitor(address, backend=backend, reply_timeout=0.3 if kind == "sim" else 3.0,
                                   connect_timeout=1.0 if kind == "sim" else 20.0,
                                   backoff=Backoff(first=5.0, most=60.0), clock=self.clock,
                                   on_state=lambda up, why: self.states.append((up, why)))

    def sim_only(self) -> SimulatedJbdBms:
        if self.bms is None:
            pytest.skip("needs the simulator's controls")
        return self.bms


@pytest.fixture(params=["sim", "hardware"])
def rig(request) -> Rig:
    if request.param == "hardware" and not HARDWARE_ADDRESS:
        pytest.skip("no JBD pack attached (set POPKIT_JBD_ADDRESS=AA:BB:CC:DD:EE:FF)")
    return Rig(request.param)


# -- every backend ------------------------------------------------------------------------------


def test_reading_arrives_and_fills_the_telemetry_contract(rig: Rig) -> None:
    async def scenario():
        reading = await rig.monitor.read()
        await rig.monitor.close()
        return reading
    reading = run(scenario())
    msg = BatteryTelemetry(boot="00ff", seq=1, ts=1, **reading.telemetry_fields())
    assert msg.source == "jbd" and 0 <= msg.soc <= 100
    assert reading.cells_v and len(reading.cells_v) == reading.info.cell_count
    assert abs(sum(reading.cells_v) - reading.info.voltage_v) < 0.05 * reading.info.cell_count
    assert rig.states[0] == (True, "connected")


def test_self_test_of_a_healthy_pack_finds_nothing(rig: Rig) -> None:
    problems = run(rig.monitor.self_test("kit-power", Expectations(min_soc=5)))
    assert problems == []


# -- the simulator: real wire bytes, broken on purpose ------------------------------------------------


@pytest.fixture
def sim() -> Rig:
    return Rig("sim")


def test_replies_go_out_in_20_byte_notifications(sim: Rig) -> None:
    run(sim.monitor.read())
    pieces = [p for _, p in sim.bms.notifications]
    assert max(len(p) for p in pieces) == 20
    # The simulator's 0x03 reply is shaped like the real one in the HCI log: 20 + 16 bytes.
    real = hci_notifications(HCI_SP04)
    assert [len(p) for p in pieces[:2]] == [len(p) for p in real if p[:2] == b"\xdd\x03"][:1] + [16]


def test_captured_reply_served_by_the_simulator_reads_as_the_codec_reads_it(sim: Rig) -> None:
    _, frames = reassemble(hci_notifications(HCI_SP04))
    frame = next(f for f in frames if f.register == REG_BASIC_INFO)
    raw = bytes((0xDD, 0x03, frame.status, len(frame.data))) + frame.data
    sim.bms.script[REG_BASIC_INFO] = raw + (-(sum(raw[2:])) & 0xFFFF).to_bytes(2, "big") + b"\x77"
    info = run(sim.monitor.read_basic_info())
    assert info == parse_basic_info(frame.data)


def test_soc_and_voltage_fall_under_load(sim: Rig) -> None:
    async def scenario():
        first = await sim.monitor.read()
        sim.bms.set_load(20.0)
        sim.pack_clock.t += 3600  # one hour at 20 A from a 100 Ah pack
        second = await sim.monitor.read()
        return first, second
    first, second = run(scenario())
    assert second.info.current_a == -20.0
    assert second.info.soc_pct == first.info.soc_pct - 20
    assert second.info.remaining_ah == pytest.approx(first.info.remaining_ah - 20, abs=0.02)
    assert second.info.voltage_v < first.info.voltage_v


@pytest.mark.parametrize("kind", ["checksum", "end", "length"])
def test_a_corrupt_reply_is_counted_and_the_request_retried(sim: Rig, kind: str) -> None:
    sim.bms.corrupt_next_reply(kind)
    reading = run(sim.monitor.read())
    assert reading.info.soc_pct == 80
    reasons = {"checksum": "bad_checksum", "end": "bad_end", "length": "length_overflow"}
    assert sim.monitor.reassembler.bad_reasons[reasons[kind]] == 1
    assert sim.bms.requests.count(REG_BASIC_INFO) == 2


def test_only_corrupt_replies_end_in_a_timeout_that_says_why(sim: Rig) -> None:
    sim.bms.corrupt_next_reply("checksum", count=5)
    with pytest.raises(JbdTimeout, match="bad_checksum") as info:
        run(sim.monitor.read())
    assert isinstance(info.value, PowerBankError) and isinstance(info.value, TimeoutError)


def test_a_silent_bms_times_out_within_the_bound_and_then_recovers(sim: Rig) -> None:
    sim.bms.mute_next_replies(2)
    started = time.monotonic()
    with pytest.raises(JbdTimeout):
        run(sim.monitor.read())
    assert time.monotonic() - started < 2 * sim.monitor.reply_timeout + 0.5
    assert run(sim.monitor.read()).info.soc_pct == 80  # a fresh connection, no backoff
    assert sim.bms.connects == 2


def test_vanished_pack_is_reported_then_found_again(sim: Rig) -> None:
    async def scenario():
        await sim.monitor.read()
        sim.bms.vanish()
        with pytest.raises(JbdLinkLost, match="not reachable"):
            await sim.monitor.read()
        assert not sim.monitor.link_up
        # Within the backoff the driver answers at once and does not hammer the radio.
        tries = sim.bms.failed_connects
        with pytest.raises(JbdLinkLost, match="next try in 5s"):
            await sim.monitor.read()
        assert sim.bms.failed_connects == tries
        sim.bms.come_back()
        sim.clock.t += 5
        return await sim.monitor.read()
    reading = run(scenario())
    assert reading.info.soc_pct == 80
    assert [up for up, _ in sim.states] == [True, False, True]
    assert sim.monitor.link.losses == 1


def test_link_lost_while_waiting_for_a_reply_is_reported_at_once(sim: Rig) -> None:
    async def scenario():
        await sim.monitor.read()
        sim.bms.mute_next_replies(1)
        asyncio.get_running_loop().call_later(0.01, sim.bms.vanish)
        started = time.monotonic()
        with pytest.raises(JbdLinkLost):
            await sim.monitor.read()
        return time.monotonic() - started
    assert run(scenario()) < sim.monitor.reply_timeout


def test_a_connect_that_hangs_is_cut_off_by_the_connect_timeout(sim: Rig) -> None:
    sim.bms.connect_delay = 30.0
    with pytest.raises(JbdLinkLost, match="no answer within 1s"):
        run(sim.monitor.read(), bound=5.0)


def test_backoff_doubles_while_the_pack_stays_away(sim: Rig) -> None:
    async def scenario():
        sim.bms.vanish()
        waits = []
        for _ in range(5):
            with pytest.raises(JbdLinkLost):
                await sim.monitor.read()
            waits.append(sim.monitor.link.next_attempt - sim.clock.t)
            sim.clock.t = sim.monitor.link.next_attempt
        return waits
    assert run(scenario()) == [5.0, 10.0, 20.0, 40.0, 60.0]


def test_no_exception_but_power_bank_errors_reaches_the_caller(sim: Rig) -> None:
    rng = random.Random(7)
    sim.monitor.reply_timeout = 0.05

    async def scenario():
        outcomes = {"ok": 0, "lost": 0, "timeout": 0}
        for _ in range(60):
            action = rng.choice(["read", "read", "vanish", "back", "corrupt", "mute"])
            if action == "vanish":
                sim.bms.vanish()
            elif action == "back":
                sim.bms.come_back()
                sim.clock.t += 120
            elif action == "corrupt":
                sim.bms.corrupt_next_reply(rng.choice(["checksum", "end", "length"]))
            elif action == "mute":
                sim.bms.mute_next_replies(1)
            try:
                await sim.monitor.read()
                outcomes["ok"] += 1
            except JbdLinkLost:
                outcomes["lost"] += 1
            except JbdTimeout:
                outcomes["timeout"] += 1
        return outcomes
    outcomes = run(scenario(), bound=30.0)
    assert outcomes["ok"] and outcomes["lost"]


# -- self-test verdicts ----------------------------------------------------------------------------------


def test_self_test_without_a_link_tells_the_crew_what_to_do(sim: Rig) -> None:
    sim.bms.vanish()
    [problem] = run(sim.monitor.self_test("kit-power", Expectations(min_soc=60)))
    assert problem.severity == "fault"
    assert str(problem) == ("kit-power: battery monitor not answering over Bluetooth, "
                            "switch the pack on and bring the Pi within range")


def test_self_test_reports_active_protection_as_a_fault(sim: Rig) -> None:
    sim.bms.set_protection("discharge_overcurrent", "cell_undervoltage")
    [problem] = run(sim.monitor.self_test("kit-power"))
    assert problem.severity == "fault"
    assert "cell_undervoltage, discharge_overcurrent" in problem.what


def test_self_test_soc_below_target_is_a_warning_and_near_empty_a_fault(sim: Rig) -> None:
    async def scenario():
        low = await sim.monitor.self_test("kit-power", Expectations(min_soc=90))
        sim.bms.set_soc(0.05)
        return low, await sim.monitor.self_test("kit-power", Expectations(min_soc=90))
    [low], [empty] = run(scenario())
    assert (low.severity, low.what) == ("warning", "battery at 80 %, 90 % wanted at doors-open")
    assert empty.severity == "fault" and "nearly empty" in empty.what


def test_self_test_reports_output_switched_off(sim: Rig) -> None:
    sim.bms.discharge_fet = False
    [problem] = run(sim.monitor.self_test("kit-power"))
    assert problem.severity == "fault" and "output switched off" in problem.what


# -- two devices, one simulated radio; no BLE stack needed to import ---------------------------------------------


def test_two_packs_on_one_radio_answer_separately() -> None:
    radio = SimulatedRadio()
    backend, a = simulated_jbd("A4:C1:38:00:00:01", radio=radio, soc=0.3)
    same, b = simulated_jbd("A4:C1:38:00:00:02", radio=radio, soc=0.7)
    assert same is backend

    async def scenario():
        return [(await JbdBms(x.address, backend=backend).read_basic_info()).soc_pct for x in (a, b)]
    assert run(scenario()) == [30, 70]


def test_drivers_import_without_bleak_and_say_so_when_used() -> None:
    code = (
        "import sys, asyncio; sys.modules['bleak'] = None\n"
        "import agent.drivers.jbd as j, agent.drivers.lamp as l\n"
        "from agent.drivers.ble import BleUnavailable\n"
        "try:\n    asyncio.run(j.jbd_monitor('AA:BB:CC:DD:EE:FF').read())\n"
        "except BleUnavailable as e:\n    print('unavailable:', e)\n"
        "print(asyncio.run(l.ble_lamp('AA:BB:CC:DD:EE:01').self_test('lamp'))[0].what)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr
    assert "unavailable: bleak is not installed" in out.stdout
    assert "lamp not reachable over Bluetooth" in out.stdout
