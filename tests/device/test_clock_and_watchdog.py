"""Time without internet, and the watchdog, as the firmware runs them: the real MicroPython (unix
port, from each role's ROMFS image in an ESP32-sized heap), a test-spawned Mosquitto, the QR module
and the outputs simulated.

What the crew would see at a venue with no uplink: a scanner that powers up with its clock in the
year 2000 still lets in every guest with a genuine ticket (the fleet sees each such check-in flagged
`clock: unset`), and refuses forgeries, revoked tickets and double entries as ever; the kit's time
message sets its clock (state says so), and from then on a ticket's window counts again; a time
message that would throw a set clock backwards or a day ahead is refused and counted. A lighting
controller with no time shows its default scene with the safety floor lit, then its schedule once
the kit's time arrives; one with no timeline yet shows the kit manifest's fallback look at its floor. A main loop that hangs is reset by the watchdog, and the next boot says why.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from kits.contract import decode, time_topic
from kits.tickets import EventKey, issue
from simulators.dmx import DmxReceiver
from simulators.pwm import PwmReceiver
from simulators.scanner import ScannerSim
from tests.conftest import wait_until
from tests.device.firmware import Device, rom_images  # noqa: F401 - fixture
from tests.device.test_lighting_app import fits_contract, pub  # noqa: F401 - pub is a fixture

KIT = "demo"
SCANNER = "demo-scanner-1"
LIGHTS = "demo-lights-1"
EVENT = "DOOR-1"
BUDGET = 64 * 1024
Y2000_MS = 946684800000 + 3600_000  # 2000-01-01T01:00Z: an ESP32's RTC after a power-up, no backup
L = 257  # linear duty_u16 per level (the board runs with gamma null)
RESET_EXIT = 75


def now_ms() -> int:
    return int(time.time() * 1000)


def kit_time(pub, ts: int, synced: bool) -> None:
    """What the kit's agent publishes: QoS 0, never retained."""
    body = {"ts": ts, "src": "ntp" if synced else "last_known", "synced": synced}
    decode("time", json.dumps(body).encode())  # the contract's own model
    pub.publish(time_topic(KIT), json.dumps(body), qos=0)


def states(seen, device: str) -> list[dict]:
    return [json.loads(p) for p in seen.on(f"{device}/state")]


# ---------------------------------------------------------------- the scanner

def scanner_config(tmp_path: Path, sim: ScannerSim, broker, key: EventKey, hw: dict, revoked=()) -> Path:
    cfg = {"kit": KIT, "device": SCANNER, "hub_ms": 100, "hw": hw,
           "broker": {"host": "127.0.0.1", "port": broker.port, "keepalive": 5, "response_ms": 1500,
                      "backoff_ms": 200, "backoff_max_ms": 1000, "resend_ms": 3000},
           "uart": ["127.0.0.1", sim.port], "flash": str(tmp_path / "flash"), "telemetry_s": 1,
           "gate": {"leeway": 0, "events": [{"event": EVENT, "key": key.secret.hex(), "capacity": 50,
                                             "revoked": list(revoked)}]}}
    path = tmp_path / "scanner.json"
    path.write_text(json.dumps(cfg))
    return path


def scanner(rom_images, cfg: Path, sim: ScannerSim) -> Device:  # noqa: F811
    n = sim.connections
    dev = Device.from_rom(rom_images["scanner"], cfg, budget=BUDGET)
    dev.expect(r"READY", timeout=10)
    sim.wait_connected(n + 1, timeout=10)
    return dev


def door(sim: ScannerSim, payload: str) -> str:
    mark = sim.mark()
    sim.scan(payload.encode())
    return sim.wait_signal("LED", after=mark, timeout=5).args[0]


def checkins(seen) -> list[dict]:
    out = []
    for p in seen.on(f"{SCANNER}/event"):
        msg = json.loads(p)
        if msg.get("kind") == "checkin":
            out.append(msg["data"])
    return out


def test_a_scanner_powered_up_in_2000_admits_genuine_tickets_flagged_then_takes_the_kits_time(
        rom_images, broker, collect, pub, tmp_path):  # noqa: F811
    seen = collect(f"popkit/v1/{KIT}/{SCANNER}/+")
    key, other = EventKey.generate(EVENT), EventKey.generate("OTHER-1")
    now = int(time.time())
    valid = issue(key, EVENT, "T1", "GA", now - 3600, now + 3600)
    early = issue(key, EVENT, "EARLY1", "GA", now + 3600, now + 7200)  # doors open in an hour
    late = issue(key, EVENT, "LATE1", "GA", now - 7200, now - 3600)  # last night's
    forged = valid[:-1] + ("A" if valid[-1] != "A" else "B")
    sim = ScannerSim()
    cfg = scanner_config(tmp_path, sim, broker, key, {"epoch_ms": Y2000_MS}, revoked=["GONE1"])
    try:
        dev = scanner(rom_images, cfg, sim)
        dev.expect(r"BOOT \w+ 9466\d+ 0 unset power")
        wait_until(lambda: any(s.get("clock") == "unset" for s in states(seen, SCANNER)), 10,
                   what="a birth state saying clock unset")
        assert states(seen, SCANNER)[0]["reset_cause"] == "power"

        # No time: signature and event decide. A guest at the door is let in; nothing else gives.
        assert door(sim, valid) == "green"
        assert door(sim, early) == "green"  # its window is not checked without a clock ...
        assert door(sim, late) == "green"  # ... either way (docs/tickets.md: why)
        assert door(sim, valid) == "red"  # double entry still refused
        assert door(sim, forged) == "red"
        assert door(sim, issue(key, EVENT, "GONE1", "GA", now - 3600, now + 3600)) == "red"  # revoked
        assert door(sim, issue(other, "OTHER-1", "X1", "GA", now - 60, now + 60)) == "red"
        dev.expect(r"SCAN wrong_event ", timeout=5)  # the console line may come after the lamp
        verdicts = [m.group(1) for m in dev.matching(r"SCAN (\w+) ")]
        assert verdicts == ["admitted", "admitted", "admitted", "already_admitted", "bad_signature", "revoked",
                            "wrong_event"]
        wait_until(lambda: len(checkins(seen)) == 7, 10, what="the seven check-ins at the broker")
        assert all(c.get("clock") == "unset" for c in checkins(seen)), "each check-in without a clock is flagged"

        # A command cannot be checked for expiry without a clock: refused, not run.
        t = now_ms()
        pub.publish(f"popkit/v1/{KIT}/{SCANNER}/cmd", json.dumps(
            {"id": "c-unset", "ts": t, "expires": t + 60_000, "action": "identify"}), qos=1)
        wait_until(lambda: any(json.loads(p)["cmd_id"] == "c-unset" for p in seen.on("/ack")), 10,
                   what="the command's answer")
        [ack] = [json.loads(p) for p in seen.on("/ack") if json.loads(p)["cmd_id"] == "c-unset"]
        assert ack["status"] == "rejected" and "clock" in ack["detail"]

        # The kit's Pi, on its last known time, sets the clock: state says "kit".
        kit_time(pub, now_ms(), synced=False)
        wait_until(lambda: states(seen, SCANNER)[-1].get("clock") == "kit", 10, what="state clock kit")
        # A kit clock may be days behind (the Pi's last known time), never ahead: expiry is judged,
        # "not yet valid" is not (docs/tickets.md).
        assert door(sim, issue(key, EVENT, "EARLY2", "GA", now + 3600, now + 7200)) == "green"
        assert door(sim, issue(key, EVENT, "LATE2", "GA", now - 7200, now - 3600)) == "red"
        assert door(sim, issue(key, EVENT, "T2", "GA", now - 3600, now + 3600)) == "green"
        wait_until(lambda: len(checkins(seen)) == 10, 10, what="three more check-ins")
        tail = checkins(seen)[-3:]
        assert [c["verdict"] for c in tail] == ["admitted", "expired", "admitted"]
        assert all("clock" not in c for c in tail), "a check-in on a set clock is not flagged"
        scan_ms = dev.expect(r"SCAN admitted T2 \d+ (\d+)", timeout=5).group(1)
        assert abs(int(scan_ms) - now_ms()) < 60_000, "the check-in carries the kit's time"

        # A jump back of a minute and one two days ahead from the unsynced Pi: refused and counted,
        # the clock kept (a synced Pi's time would be taken: test_clock_logic).
        kit_time(pub, now_ms() - 60_000, synced=False)
        kit_time(pub, now_ms() + 2 * 86400_000, synced=False)
        wait_until(lambda: any(json.loads(p).get("clock_refused") == 2 for p in seen.on("/telemetry")), 10,
                   what="telemetry counting two refused time messages")
        assert len(dev.matching(r"W clock: refused")) == 2
        assert states(seen, SCANNER)[-1]["clock"] == "kit"

        # The Pi gets NTP: the same time, now synced.
        kit_time(pub, now_ms(), synced=True)
        wait_until(lambda: states(seen, SCANNER)[-1].get("clock") == "synced", 10, what="state clock synced")
        assert fits_contract(seen) > 10
        dev.kill()
    finally:
        sim.close()


# ---------------------------------------------------------------- the lighting controller

def lighting_config(tmp_path: Path, broker, pwm: PwmReceiver, dmx: DmxReceiver, hw: dict) -> Path:
    cfg = {"kit": KIT, "device": LIGHTS, "broker": ["127.0.0.1", broker.port], "dmx_slots": 24, "hw": hw,
           "state_dir": str(tmp_path / "flash"), "pwm": ["127.0.0.1", pwm.port], "dmx": ["127.0.0.1", dmx.port],
           "gamma": None, "telemetry_s": 1, "keepalive": 5, "response_ms": 1500, "backoff_ms": 200,
           "backoff_max_ms": 500}
    (tmp_path / "flash").mkdir(exist_ok=True)
    path = tmp_path / "lighting.json"
    path.write_text(json.dumps(cfg))
    return path


def test_lighting_without_time_shows_its_default_with_the_floor_then_its_schedule_once_the_kit_has_time(
        rom_images, broker, collect, pub, tmp_path):  # noqa: F811
    seen = collect(f"popkit/v1/{KIT}/{LIGHTS}/+")
    pwm, dmx = PwmReceiver(), DmxReceiver(keep=50)
    now = int(time.time())
    timeline = {"format": 1, "default": "house",
                "scenes": {"house": {"levels": {"w": 60}}, "show": {"levels": {"r": 200}}},
                "windows": [[now - 600, now + 3600, "show", 10]],  # the set is on now
                "floor": {"levels": {"g": 80}, "open": [[now - 3600, now + 7200]]}}  # the venue is open
    pub.publish(f"popkit/v1/{KIT}/{LIGHTS}/config", json.dumps({"version": 4, "ts": now * 1000, "data": timeline}),
                qos=1, retain=True).wait_for_publish(5)
    house_with_floor = [0, 80 * L, 0, 60 * L]
    show_with_floor = [200 * L, 80 * L, 0, 0]
    try:
        dev = Device.from_rom(rom_images["lighting"], lighting_config(tmp_path, broker, pwm, dmx,
                                                                      {"epoch_ms": Y2000_MS}), budget=BUDGET)
        dev.expect(r"CLOCK unset power")
        dev.expect(r"CONFIG 4 1", timeout=10)
        wait_until(lambda: pwm.duties() == house_with_floor, 5,
                   what=f"the default scene with the floor lit (have {pwm.duties()})")
        wait_until(lambda: any(s.get("clock") == "unset" for s in states(seen, LIGHTS)), 10, what="state clock unset")
        time.sleep(1.5)  # a second or more of ticks: still no schedule without a clock
        assert pwm.duties() == house_with_floor

        kit_time(pub, now_ms(), synced=True)
        wait_until(lambda: pwm.duties() == show_with_floor, 5,
                   what=f"the schedule's scene once the clock is set (have {pwm.duties()})")
        wait_until(lambda: states(seen, LIGHTS)[-1].get("clock") == "synced", 10, what="state clock synced")
        assert fits_contract(seen) > 2
        dev.kill()
    finally:
        pwm.close()
        dmx.close()


def test_a_controller_flashed_with_no_timeline_shows_its_fallback_at_its_floor_then_its_schedule(
        rom_images, broker, collect, pub, tmp_path):  # noqa: F811
    """Freshly flashed at a venue with no uplink: no timeline on flash, the clock in 2000. The house
    light the kit manifest names comes up at once with the exit lights at their floor, not a dark
    stage; the kit's time alone changes nothing (there is no schedule to follow); the first timeline
    to arrive is then followed."""
    from kits.manifest import load_manifest
    from popkit.provision import provision
    from tests.conftest import DEMO_KIT

    provision(load_manifest(DEMO_KIT), tmp_path / "kit", tls=False)  # the device file as flashed
    fallback = json.loads((tmp_path / "kit" / "devices" / f"{LIGHTS}.json").read_text())["fallback"]
    assert fallback["levels"]["w"] == 180 and fallback["floor"]["dmx"] == {"23": [255, 255]}
    seen = collect(f"popkit/v1/{KIT}/{LIGHTS}/+")
    pwm, dmx = PwmReceiver(), DmxReceiver(keep=50)
    cfg = lighting_config(tmp_path, broker, pwm, dmx, {"epoch_ms": Y2000_MS})
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "fallback": fallback}))
    house = [0, 0, 0, 180 * L]
    exits = bytes(22) + bytes([255, 255])  # DMX 23-24 at the floor, the rest dark

    def showing(duties, slots) -> bool:
        f = dmx.last()
        return pwm.duties() == duties and f is not None and f.slots == slots

    try:
        dev = Device.from_rom(rom_images["lighting"], cfg, budget=BUDGET)
        dev.expect(r"SCENE fallback \d+ None")  # before the network: nothing on flash, no version
        dev.expect(r"CLOCK unset power")
        wait_until(lambda: showing(house, exits), 5, what=f"the fallback at its floor (have {pwm.duties()})")
        assert all(d == house[c] for _, c, d in pwm.writes()), "cut to the fallback, no fade up from dark"
        wait_until(lambda: any(s.get("clock") == "unset" for s in states(seen, LIGHTS)), 10, what="state clock unset")

        kit_time(pub, now_ms(), synced=True)  # time, but no schedule yet: the fallback holds
        wait_until(lambda: states(seen, LIGHTS)[-1].get("clock") == "synced", 10, what="state clock synced")
        time.sleep(1.5)
        assert showing(house, exits) and not dev.matching(r"FALLBACK bad")

        now = int(time.time())
        timeline = {"format": 1, "default": "dark",
                    "scenes": {"dark": {"levels": {}}, "show": {"levels": {"r": 200, "dmx": {"1": [90]}}}},
                    "windows": [[now - 600, now + 3600, "show", 10]],
                    "floor": {"levels": {"g": 80}, "open": [[now - 3600, now + 7200]]}}
        pub.publish(f"popkit/v1/{KIT}/{LIGHTS}/config", json.dumps({"version": 6, "ts": now * 1000, "data": timeline}),
                    qos=1, retain=True).wait_for_publish(5)
        dev.expect(r"CONFIG 6 1", timeout=10)
        wait_until(lambda: showing([200 * L, 80 * L, 0, 0], bytes([90]) + bytes(23)), 5,
                   what=f"the schedule's scene with its own floor (have {pwm.duties()})")
        assert fits_contract(seen) > 2
        dev.kill()
    finally:
        pwm.close()
        dmx.close()
        pub.publish(f"popkit/v1/{KIT}/{LIGHTS}/config", b"", qos=1, retain=True).wait_for_publish(5)


# ---------------------------------------------------------------- the watchdog

def test_a_hung_scanner_loop_is_reset_by_the_watchdog_and_the_next_boot_says_so(
        rom_images, broker, collect, pub, tmp_path):  # noqa: F811
    seen = collect(f"popkit/v1/{KIT}/{SCANNER}/+")
    key = EventKey.generate(EVENT)
    now = int(time.time())
    sim = ScannerSim()
    cfg = scanner_config(tmp_path, sim, broker, key, {"wdt_ms": 1500})  # the host's clock: commands run
    try:
        dev = scanner(rom_images, cfg, sim)
        dev.expect(r"BOOT \w+ \d+ 0 synced power")
        wait_until(lambda: states(seen, SCANNER), 10, what="the birth state")
        assert door(sim, issue(key, EVENT, "W1", "GA", now - 60, now + 3600)) == "green"
        t = now_ms()
        pub.publish(f"popkit/v1/{KIT}/{SCANNER}/cmd", json.dumps(
            {"id": "c-hang", "ts": t, "expires": t + 60_000, "action": "hang"}), qos=1)
        dev.expect(r"HANG", timeout=10)
        dev.expect(r"WATCHDOG", timeout=10)
        assert dev.wait(10) == RESET_EXIT, "the watchdog ends the process as a reset would"

        dev = scanner(rom_images, cfg, sim)  # what the supervisor does on RESET_EXIT
        dev.expect(r"BOOT \w+ \d+ \d+ synced watchdog")
        wait_until(lambda: states(seen, SCANNER)[-1].get("reset_cause") == "watchdog", 10,
                   what="a birth state saying reset_cause watchdog")
        assert door(sim, issue(key, EVENT, "W2", "GA", now - 60, now + 3600)) == "green"
        dev.kill()  # a power cut: the next boot is a power-up again

        dev = scanner(rom_images, cfg, sim)
        dev.expect(r"BOOT \w+ \d+ \d+ synced power")
        dev.kill()
    finally:
        sim.close()


def test_a_hung_lighting_loop_is_reset_by_the_watchdog_and_the_next_boot_says_so(
        rom_images, broker, collect, pub, tmp_path):  # noqa: F811
    seen = collect(f"popkit/v1/{KIT}/{LIGHTS}/+")
    pwm, dmx = PwmReceiver(), DmxReceiver(keep=50)
    cfg = lighting_config(tmp_path, broker, pwm, dmx, {"wdt_ms": 1500})
    try:
        dev = Device.from_rom(rom_images["lighting"], cfg, budget=BUDGET)
        dev.expect(r"CLOCK synced power")
        wait_until(lambda: states(seen, LIGHTS), 10, what="the birth state")
        t = now_ms()
        pub.publish(f"popkit/v1/{KIT}/{LIGHTS}/cmd", json.dumps(
            {"id": "l-hang", "ts": t, "expires": t + 60_000, "action": "hang"}), qos=1)
        dev.expect(r"HANG", timeout=10)
        assert dev.wait(15) == RESET_EXIT, "the watchdog ends the process as a reset would"

        dev = Device.from_rom(rom_images["lighting"], cfg, budget=BUDGET)
        dev.expect(r"CLOCK synced watchdog")
        wait_until(lambda: states(seen, LIGHTS)[-1].get("reset_cause") == "watchdog", 10,
                   what="a birth state saying reset_cause watchdog")
        dev.kill()
    finally:
        pwm.close()
        dmx.close()


def test_a_reboot_from_the_fleet_comes_back_saying_soft(rom_images, broker, collect, pub, tmp_path):  # noqa: F811
    seen = collect(f"popkit/v1/{KIT}/{SCANNER}/+")
    sim = ScannerSim()
    cfg = scanner_config(tmp_path, sim, broker, EventKey.generate(EVENT), {})
    try:
        dev = scanner(rom_images, cfg, sim)
        dev.expect(r"BOOT \w+ \d+ 0 synced power")
        wait_until(lambda: states(seen, SCANNER), 10, what="the birth state")
        t = now_ms()
        pub.publish(f"popkit/v1/{KIT}/{SCANNER}/cmd", json.dumps(
            {"id": "c-reboot", "ts": t, "expires": t + 60_000, "action": "reboot"}), qos=1)
        assert dev.wait(15) == RESET_EXIT, "machine.reset() on a board: the process ends for its supervisor"
        dev = scanner(rom_images, cfg, sim)
        dev.expect(r"BOOT \w+ \d+ \d+ synced soft")
        wait_until(lambda: states(seen, SCANNER)[-1].get("reset_cause") == "soft", 10,
                   what="a birth state saying reset_cause soft")
        dev.kill()
    finally:
        sim.close()
