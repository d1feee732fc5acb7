"""The lighting controller as deployed (device/apps/lighting/main.py on the unix board) in the real
MicroPython with a 64 KB heap, against a test-spawned Mosquitto and the fleet.

What the venue would see: a scene command fades the strips and the DMX fixtures to the
levels asked for; with the broker gone the controller keeps following its timeline; a
controller that loses power in the middle of the set comes back in the set at once, with
no network; expired and retained commands never run; everything it sends fits the contract.

The simulated outputs: PWM duty writes on a local socket (simulators/pwm.py, records
b"P" channel:u8 duty:u16be), DMX as dmx.StreamPort records to simulators/dmx.py.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from kits.contract import DEVICE_CHANNELS, decode
from simulators.dmx import DmxReceiver
from simulators.pwm import PwmReceiver
from tests.conftest import publisher, wait_until
from tests.device.firmware import Device, mpy_cross, rom_images, rom_names_bytes  # noqa: F401 - fixture
from tests.device.mpy import DEVICE

LIGHTS = "demo-lights-1"
TREE = f"popkit/v1/demo/{LIGHTS}"
APP = DEVICE / "apps" / "lighting" / "main.py"
# The controller runs from its ROMFS image (popkit/romfs.py: bytecode in place, as frozen code runs
# from an ESP32's flash) in a process heap of 64 KB plus the image: everything it allocates, its
# modules' objects included, fits the 64 KB, and its live peak is held to PEAK_TARGET.
BUDGET = 64 * 1024
PEAK_TARGET = 48 * 1024
L = 257  # linear duty_u16 per level (the tests run the board with gamma null)


@pytest.fixture
def outputs():
    pwm, dmx = PwmReceiver(), DmxReceiver(keep=400)
    yield pwm, dmx
    pwm.close()
    dmx.close()


@pytest.fixture
def pub(broker):
    p = publisher(broker.url)
    yield p
    p.disconnect()
    p.loop_stop()


def role_config(tmp_path: Path, broker, outputs, **more) -> Path:
    pwm, dmx = outputs
    cfg = {"kit": "demo", "device": LIGHTS, "broker": ["127.0.0.1", broker.port], "dmx_slots": 24,
           "state_dir": str(tmp_path / "flash"), "pwm": ["127.0.0.1", pwm.port], "dmx": ["127.0.0.1", dmx.port],
           "gamma": None, "telemetry_s": 1, "keepalive": 5, "response_ms": 1500, "backoff_ms": 200,
           "backoff_max_ms": 500, **more}
    (tmp_path / "flash").mkdir(exist_ok=True)
    path = tmp_path / "lighting.json"
    path.write_text(json.dumps(cfg))
    return path


def controller(rom_images: dict[str, Path], cfg: Path) -> Device:
    return Device.from_rom(rom_images["lighting"], cfg, budget=BUDGET)


def now_ms() -> int:
    return int(time.time() * 1000)


def cmd(cid: str, expires_in_ms: int = 60_000, **args) -> str:
    t = now_ms()
    return json.dumps({"id": cid, "ts": t, "expires": t + expires_in_ms, "action": "scene", "args": args})


def acks(seen) -> dict[str, str]:
    return {json.loads(p)["cmd_id"]: json.loads(p)["status"] for p in seen.on("/ack")}


def fits_contract(seen) -> int:
    n = 0
    for topic, payload, _ in list(seen.messages):
        channel = topic.rsplit("/", 1)[1]
        if channel in DEVICE_CHANNELS:
            decode(channel, payload)  # raises ContractError naming the field
            n += 1
    return n


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


SHOW = {"r": 200, "g": 100, "w": 255, "dmx": {"1": [255, 128], "5": [40]}}


def test_scene_commands_fade_the_outputs_end_to_end_and_all_it_sends_fits_the_contract(
        rom_images, broker, fleet, collect, pub, outputs, tmp_path):  # noqa: F811
    pwm, dmx = outputs
    seen = collect(f"{TREE}/+")
    t = now_ms()
    timeline = {"format": 1, "scenes": {"dark": {"levels": {}}, "warm": {"levels": {"r": 90}}}, "default": "dark"}
    pub.publish(f"{TREE}/config", json.dumps({"version": 3, "ts": t, "data": timeline}), qos=1,
                retain=True).wait_for_publish(5)
    dev = controller(rom_images, role_config(tmp_path, broker, outputs))
    try:
        dev.expect(r"SCENE None \d+ None")  # nothing on flash yet: dark, before the network
        dev.expect(r"CONFIG 3 1", timeout=10)
        wait_until(lambda: fleet.api.get(f"/api/v1/devices/{LIGHTS}").json().get("config_version") == 3, 10,
                   what="the fleet showing config version 3 applied")

        # a scene command with a fade: PWM and DMX reach the target, monotonically, over ~800 ms
        wait_until(lambda: pwm.current() is not None, 5, what="the PWM connection")
        mark = len(pwm.writes())
        pub.publish(f"{TREE}/cmd", cmd("c-fade", levels=SHOW, fade_ms=800), qos=1).wait_for_publish(5)
        target = [200 * L, 100 * L, 0, 255 * L]
        wait_until(lambda: pwm.duties() == target, 5, what=f"PWM at {target} (have {pwm.duties()})")
        fade = pwm.writes()[mark:]
        for ch in range(4):
            series = [d for _, c, d in fade if c == ch]
            assert series == sorted(series), f"channel {ch} not monotonic: {series}"
            if target[ch]:
                assert len(set(series)) >= 10, f"channel {ch} cut instead of fading: {series}"
        took = fade[-1][0] - fade[0][0]
        assert 0.6 <= took <= 1.3, f"the 800 ms fade took {took * 1000:.0f} ms"
        wait_until(lambda: (f := dmx.last()) and f.slots[:5] == bytes([255, 128, 0, 0, 40]), 3,
                   what="the DMX frame at the target")
        frames = list(dmx.frames)
        for slot in (1, 2, 5):
            series = [f.slot(slot) for f in frames]
            assert series == sorted(series), f"DMX slot {slot} not monotonic: {series}"
            assert len(set(series)) >= 5, f"DMX slot {slot} did not fade: {series}"
        assert not dmx.violations
        wait_until(lambda: acks(seen).get("c-fade") == "ok", 5, what="the ack")

        # an expired command: acked "expired", nothing changes
        before = len(pwm.writes())
        pub.publish(f"{TREE}/cmd", cmd("c-late", expires_in_ms=-1000, levels={"r": 1}), qos=1).wait_for_publish(5)
        wait_until(lambda: acks(seen).get("c-late") == "expired", 5, what="the expired ack")
        time.sleep(0.2)
        assert len(pwm.writes()) == before and pwm.duties() == target
        assert not dev.matching(r"CMD c-late")

        # a config the controller cannot run: refused with the reason, version 3 keeps running
        bad = {"version": 4, "ts": now_ms(), "data": {**timeline, "format": 2}}
        pub.publish(f"{TREE}/config", json.dumps(bad), qos=1, retain=True).wait_for_publish(5)
        dev.expect(r"CONFIG 4 0 format: this controller reads timeline format 1, not 2", timeout=5)
        wait_until(lambda: any(json.loads(p)["kind"] == "fault" for p in seen.on("/event")), 5, what="a fault event")
        assert fleet.api.get(f"/api/v1/devices/{LIGHTS}").json().get("config_version") == 3

        # command -> output through the broker, 50 times (cuts; each a new level on w)
        lat = []
        for i in range(50):
            level = 1 + i * 2
            t0 = time.monotonic()
            pub.publish(f"{TREE}/cmd", cmd(f"c-lat-{i}", levels={"w": level}), qos=1)

            def arrived(want=level * L, t0=t0):
                hits = [tw for tw, c, d in pwm.writes()[-8:] if c == 3 and d == want and tw >= t0]
                return hits[0] if hits else None

            lat.append((wait_until(arrived, 3, interval=0.001, what=f"w at {level}") - t0) * 1000)
        p50, p99 = pct(lat, 50), pct(lat, 99)
        wait_until(lambda: sum(1 for s in acks(seen).values() if s == "ok") >= 51, 10, what="51 ok acks")
        wait_until(lambda: any(json.loads(p).get("scene") == "manual" for p in seen.on("/telemetry")), 5,
                   what="device telemetry naming the scene")
        dev.expect(r"HEAP (\d+) (\d+) (\d+)", timeout=5, after=dev.mark())
        # Live heap after a collection, at its highest, less the flash stand-in; and less the
        # modules' names, which a frozen build keeps in flash too.
        live = max(int(m.group(1)) for m in dev.matching(r"HEAP (\d+)")) - dev.image_bytes
        names = rom_names_bytes("lighting", rom_images["lighting"])
        print(f"\nlighting app: command->PWM through the broker p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
              f"max {max(lat):.1f} ms over {len(lat)}; heap ({BUDGET // 1024} KB, code in a "
              f"{dev.image_bytes} B ROMFS image): live peak {live} B, {live - names} B without the "
              f"{names} B of names a frozen build keeps in flash")
        assert live - names <= PEAK_TARGET, live
        n = fits_contract(seen)
        assert n >= 1 + 52 + 1
        assert fleet.store.ledger.dead_letters(10) == []
    finally:
        dev.kill()
        pub.publish(f"{TREE}/config", b"", qos=1, retain=True).wait_for_publish(5)


def test_offline_it_follows_its_timeline_and_a_restart_mid_window_shows_the_scene_at_once(
        rom_images, broker, collect, pub, outputs, tmp_path):  # noqa: F811
    pwm, dmx = outputs
    seen = collect(f"{TREE}/+")
    t = int(time.time())
    edge = t + 6  # window "a" ends and "b" begins while the broker is down
    timeline = {"format": 1, "default": "dark",
                "scenes": {"dark": {"levels": {}}, "a": {"levels": {"w": 50, "dmx": {"1": [10]}}},
                           "b": {"levels": {"g": 180, "w": 200, "dmx": {"1": [220, 30]}}, "fade_ms": 300}},
                "windows": [[t - 60, edge, "a", 10], [edge, t + 600, "b", 10]]}
    pub.publish(f"{TREE}/config", json.dumps({"version": 5, "ts": t * 1000, "data": timeline}), qos=1,
                retain=True).wait_for_publish(5)
    cfg = role_config(tmp_path, broker, outputs)
    dev = controller(rom_images, cfg)
    try:
        dev.expect(r"CONFIG 5 1", timeout=10)
        wait_until(lambda: pwm.duties() == [0, 0, 0, 50 * L], 3, what="scene a")
        once = cmd("c-once", levels={"r": 77, "w": 50})
        pub.publish(f"{TREE}/cmd", once, qos=1).wait_for_publish(5)
        wait_until(lambda: pwm.duties()[0] == 77 * L, 3, what="the command's level")
        wait_until(lambda: acks(seen).get("c-once") == "ok", 5, what="its ack")
        # left retained by mistake: a restarted controller must never run it again
        pub.publish(f"{TREE}/cmd", once, qos=1, retain=True).wait_for_publish(5)
        assert time.time() < edge - 1, "the test was too slow to stop the broker before the window boundary"
        broker.stop()

        # offline across the boundary: the controller fades to "b" from its own clock
        wait_until(lambda: pwm.duties() == [0, 180 * L, 0, 200 * L], edge - time.time() + 3,
                   what=f"scene b after the boundary, offline (have {pwm.duties()})")
        assert time.time() >= edge - 0.05
        wait_until(lambda: (f := dmx.last()) and f.slots[:2] == bytes([220, 30]), 2, what="DMX in scene b")

        # power cut in the middle of "b", broker still down: back in "b" at once
        dev.kill()
        sessions = len(pwm.sessions)
        t0 = time.monotonic()
        dev = controller(rom_images, cfg)
        want = [0, 180 * L, 0, 200 * L]
        wait_until(lambda: len(pwm.sessions) > sessions and pwm.duties() == want, 5, interval=0.002,
                   what="scene b after the restart")
        first = pwm.writes()
        boot_to_scene = (max(tw for tw, _, _ in first[:4]) - t0) * 1000
        in_fw = int(dev.expect(r"SCENE b (\d+) 5").group(1))
        assert all(d == want[c] for _, c, d in first), f"not straight to the scene: {first}"  # no fade up from dark
        wait_until(lambda: (f := dmx.last()) and f.slots[:2] == bytes([220, 30]), 2, what="DMX after the restart")
        print(f"\nlighting app: boot-to-scene {boot_to_scene:.0f} ms from process start "
              f"({in_fw} ms inside the firmware), broker down")
        assert boot_to_scene < 2000

        # the broker is back: the retained command arrives and is not run again
        mark = dev.mark()
        broker.start()
        wait_until(lambda: any(json.loads(p).get("online") and json.loads(p)["boot"] != json.loads(seen.on("/state")[0])["boot"]
                               for p in seen.on("/state")), 10, what="the second boot's birth")
        time.sleep(1.0)
        assert pwm.duties() == want and not any(d == 77 * L for _, c, d in pwm.writes() if c == 0)
        assert not dev.matching(r"CMD c-once (ok|rejected)"), dev.lines[mark:]
        assert list(acks(seen)) == ["c-once"] and len(seen.on("/ack")) == 1
        fits_contract(seen)
    finally:
        dev.kill()
        if broker.running:
            pub.publish(f"{TREE}/cmd", b"", qos=1, retain=True).wait_for_publish(5)
            pub.publish(f"{TREE}/config", b"", qos=1, retain=True).wait_for_publish(5)


def test_reboot_from_the_fleet_answers_then_resets_and_a_redelivery_does_not_reset_again(
        rom_images, broker, fleet, collect, pub, outputs, tmp_path):  # noqa: F811
    """The dashboard's "reboot": acked first, the link leaves (state shutdown), the board resets (on
    the unix port the process ends with RESET_EXIT for its supervisor) and the controller comes back
    with a new boot. The same command again, issued before that boot, is answered, not obeyed."""
    seen = collect(f"{TREE}/+")
    cfg = role_config(tmp_path, broker, outputs)
    dev = controller(rom_images, cfg)
    try:
        wait_until(lambda: fleet.api.get(f"/api/v1/devices/{LIGHTS}").json()["online"], 10, what="online")
        boot1 = fleet.api.get(f"/api/v1/devices/{LIGHTS}").json()["boot"]
        r = fleet.api.post(f"/api/v1/devices/{LIGHTS}/commands", json={"action": "reboot", "by": "ops-test"})
        assert r.status_code == 202, r.text
        sent = r.json()
        assert dev.wait(15) == 75, "the unix board's reset ends the process with RESET_EXIT"
        got = wait_until(lambda: (c := fleet.api.get(f"/api/v1/devices/{LIGHTS}/commands").json()[0])["status"] != "pending"
                         and c, 10, what="the reboot's ack in the fleet")
        assert (got["id"], got["status"], got["detail"]) == (sent["id"], "ok", "restarting")
        states = [json.loads(p) for p in seen.on("/state")]
        assert states[-1]["online"] is False and states[-1]["reason"] == "shutdown", "it left gracefully first"

        dev = controller(rom_images, cfg)  # what the supervisor does on RESET_EXIT
        wait_until(lambda: (d := fleet.api.get(f"/api/v1/devices/{LIGHTS}").json())["online"] and d["boot"] != boot1,
                   10, what="back online with a new boot")
        # The broker redelivering it to the new boot (its ids that ran were in RAM): answered, not obeyed.
        redelivered = {"id": sent["id"], "ts": sent["ts"], "expires": sent["expires"], "action": "reboot", "args": {}}
        pub.publish(f"{TREE}/cmd", json.dumps(redelivered), qos=1).wait_for_publish(5)
        answers = lambda: [json.loads(p) for p in seen.on("/ack") if json.loads(p)["cmd_id"] == sent["id"]]  # noqa: E731
        wait_until(lambda: len(answers()) == 2, 10, what="the second answer")
        assert answers()[1]["status"] == "ok" and answers()[1]["detail"].startswith("restarted at ")
        time.sleep(1.0)
        assert dev.proc.poll() is None, "a reboot issued before this boot must not reset it again"
        fits_contract(seen)
    finally:
        dev.kill()


def test_esp32_board_layer_and_manifest_compile(tmp_path):
    """The ESP32 board layer cannot run here: it must at least compile, and the manifest name real files."""
    src = DEVICE / "boards" / "esp32" / "lighting_hw.py"
    r = subprocess.run([mpy_cross(), "-march=xtensawin", "-o", str(tmp_path / "hw.mpy"), str(src)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    calls = []
    env = {"metadata": lambda **kw: calls.append(("meta", kw)),
           "module": lambda name, base_path=".": calls.append(("module", DEVICE / base_path / name))}
    exec((DEVICE / "manifest_lighting.py").read_text(), env)
    assert calls[0][0] == "meta" and calls[0][1]["version"]
    mods = [p for k, p in calls if k == "module"]
    assert all(p.exists() for p in mods), [p for p in mods if not p.exists()]
    assert {"lighting.py", "link.py", "main.py", "lighting_hw.py"} <= {p.name for p in mods}
