"""A lighting controller takes a field update from its update mode, its lights held (issue 18;
device/lib/upmode.py, docs/updates.md "Lighting controllers: the update mode").

From real parts: the lighting firmware in the real unix-port MicroPython, flashed as `popkit device flash`
stages it (the boot stage, slot a), a real Mosquitto as the kit broker, the agent's kit-network server
(agent/updates/server.py) serving a signed release from the kit's cache through the rig's relay
(tests/device/updaterig.py), the offer retained on the controller's update topic as the agent publishes
it, and the outputs read back by the PWM and DMX simulators (simulators/pwm.py, simulators/dmx.py).

What a crew would see: a controller offered a release resets into its update mode with every light at
the level it had (PWM duties and DMX slots unchanged, no dark frame, from before the offer to the new
release's trial), downloads, boots the release on trial and commits it; a release it must refuse brings
it back to its app, reported failed with why, and is not taken again; a power cut in the update mode is
resumed at the next boot from what is on flash; the update mode's heap is within the 48 KB budget.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from agent.updates.cache import UpdateCache
from kits.contract import decode
from kits.release import new_private_key, public_key_of, write_bundle
from popkit import flashtree
from popkit.romfs import boot_code, build_image, heap_for
from simulators.dmx import DmxReceiver
from simulators.pwm import PwmReceiver
from tests.conftest import publisher, wait_until
from tests.device import updaterig as rig
from tests.device.firmware import Device, rom_names_bytes
from tests.device.mpy import DEVICE

LIGHTS = "upd-lights-1"
TOPIC = f"popkit/v1/{rig.KIT}/{LIGHTS}"
RUNNING = "lighting-0.4.1"  # FW in device/apps/lighting/main.py
KEY = bytes(range(32, 64))
SLOTS = 24
# The show on when the offer comes: the timeline's only scene (kept on flash: every boot shows it)
SHOW = {"r": 200, "g": 100, "w": 255, "dmx": {"1": [255, 128], "5": [40], "24": [7]}}
DUTIES = [200 * 257, 100 * 257, 0, 255 * 257]  # linear (gamma null): level * 257
FRAME = bytes([255, 128, 0, 0, 40] + [0] * 18 + [7])


class Outputs:
    """The PWM and DMX simulators, every DMX frame kept (a dark one anywhere is a failure)."""

    def __init__(self):
        self.pwm = PwmReceiver()
        self.dmx = DmxReceiver(keep=1_000_000)

    def frames(self, after: int = 0) -> list[bytes]:
        with self.dmx._lock:
            return [f.slots for f in list(self.dmx.frames)[after:]]

    def mark(self) -> tuple[int, int, int]:
        """Where the outputs' records stand now: (DMX frames, PWM session, writes in that session)."""
        s = self.pwm.sessions
        return self.dmx.count, len(s) - 1, len(s[-1].writes)

    def writes(self, session: int, first: int) -> list[tuple[int, int]]:
        """(channel, duty) of every PWM write from write ``first`` of boot (connection) ``session`` on."""
        out = []
        for i, s in enumerate(self.pwm.sessions[session:]):
            out += [(ch, d) for _t, ch, d in list(s.writes)[first if i == 0 else 0:]]
        return out

    def showing(self) -> bool:
        f = self.dmx.last()
        return self.pwm.duties() == DUTIES and f is not None and f.slots == FRAME

    def close(self):
        self.pwm.close()
        self.dmx.close()


class LightsKit:
    """A flashed controller's tree, its release, the kit's cache and update server, and the relay."""

    def __init__(self, tmp: Path, broker_port: int, out: Outputs, rate: int = 0):
        self.tmp = tmp
        self.pem = new_private_key()
        cfg = {"kit": rig.KIT, "device": LIGHTS, "broker": ["127.0.0.1", broker_port], "dmx_slots": SLOTS,
               "pwm": ["127.0.0.1", out.pwm.port], "dmx": ["127.0.0.1", out.dmx.port], "gamma": None,
               "telemetry_s": 2, "keepalive": 5, "response_ms": 1500, "backoff_ms": 200, "backoff_max_ms": 500,
               "update_key": KEY.hex(), "trial_s": 2,
               "update": {"timeout_ms": 3000, "tries": 4, "backoff_ms": 300}}
        self.tree = flashtree.stage("lighting", "unix", cfg, tmp / "tree")
        self.cache = UpdateCache(tmp / "agent" / "updates", public_key_of(self.pem))
        keys = tmp / "agent" / "update-keys.json"
        keys.parent.mkdir(parents=True, exist_ok=True)
        keys.write_text(json.dumps({LIGHTS: KEY.hex()}))
        keys.chmod(0o600)
        self.server = rig.ServerThread(self.cache, keys).start()
        self.relay = rig.Relay(self.server.port, rate)
        self._n = 0

    def release(self, version: str, role: str = "lighting") -> tuple[str, int]:
        """The real lighting firmware at ``version`` (its slot's modules, the app with FW set), signed
        and cached; (its name, its files' bytes). ``role``: what the manifest says."""
        files = {p.name: p.read_bytes() for p in sorted((self.tree / "a").iterdir()) if p.suffix == ".mpy"}
        app = (DEVICE / "apps" / "lighting" / "main.py").read_text()
        assert f'FW = "{RUNNING}"' in app, "the lighting app's FW moved: update RUNNING here"
        files["app_main.mpy"] = rig.compile_app(app.replace(f'FW = "{RUNNING}"', f'FW = "lighting-{version}"'),
                                                self.tmp / f"app-{role}-{version}.mpy")
        folder = write_bundle(self.tmp / f"bundles-{os.urandom(3).hex()}", role, version, rig.mpy_abi(), files,
                              self.pem, 1)
        self.cache.add(folder)
        return f"{role}-{version}", json.loads((folder / "manifest.json").read_bytes())["total_size"]

    def offer(self, release: str) -> bytes:
        self._n += 1
        return json.dumps({"id": f"o{self._n}-{os.urandom(2).hex()}", "release": release, "fw": release,
                           "host": "127.0.0.1", "port": self.relay.port, "rollback": False,
                           "ts": int(time.time() * 1000)}).encode()

    def boot(self) -> Device:
        """The flashed tree booted as a board does (main.py: the boot stage picks slot and mode)."""
        return Device.from_tree(self.tree, rig.TREE_HEAP)

    def close(self):
        self.relay.close()
        self.server.close()


@pytest.fixture
def out():
    o = Outputs()
    yield o
    o.close()


@pytest.fixture
def pub(broker):
    c = publisher(broker.url)
    yield c
    c.disconnect()
    c.loop_stop()


def make_kit(tmp_path, broker, out, pub, rate: int = 0) -> LightsKit:
    kit = LightsKit(tmp_path, broker.port, out, rate)
    timeline = {"format": 1, "scenes": {"show": {"levels": SHOW}}, "default": "show"}
    pub.publish(f"{TOPIC}/config", json.dumps({"version": 1, "ts": int(time.time() * 1000), "data": timeline}),
                qos=1, retain=True).wait_for_publish(5)
    return kit


def offer(pub, payload: bytes) -> None:
    pub.publish(f"{TOPIC}/update", payload, qos=1, retain=True).wait_for_publish(5)


def updates(seen) -> list[dict]:
    out = []
    for p in seen.on("/state"):
        st = decode("state", p)
        if st.online and st.update:
            out.append(st.update.model_dump(exclude_none=True))
    return out


def showing_app(kit: LightsKit, out: Outputs) -> Device:
    """The controller in its app, the show on its outputs."""
    dev = kit.boot()
    dev.expect(r"ABBOOT a normal", timeout=15)
    dev.expect(r"CONFIG 1 1|SCENE show", timeout=15)
    wait_until(out.showing, 15, what="the show on the PWM and DMX outputs")
    return dev


def assert_held(out: Outputs, mark: tuple[int, int, int]) -> int:
    """Every DMX frame and PWM write since ``mark`` (the show on) are the show's levels; returns the frames."""
    frame0, session0, write0 = mark
    frames = out.frames(frame0)
    dark = [i for i, f in enumerate(frames) if f != FRAME]
    assert not dark, f"{len(dark)} of {len(frames)} DMX frames not the show's, first {frames[dark[0]][:8]!r}"
    writes = out.writes(session0, write0)
    assert writes and all(d == DUTIES[ch] for ch, d in writes), f"PWM writes off the show's duties: {writes}"
    assert not out.dmx.violations, out.dmx.violations[:3]
    return len(frames)


# ------------------------------------------------------------------ the update, lights held

def test_an_offered_controller_holds_its_lights_through_the_update_mode_trial_and_commit(
        tmp_path, broker, out, pub, collect):
    kit = make_kit(tmp_path, broker, out, pub)
    try:
        seen = collect(f"{TOPIC}/state")
        release, size = kit.release("0.4.2")
        dev = showing_app(kit, out)
        mark = out.mark()

        offer(pub, kit.offer(release))
        assert dev.wait(20) == 75, "the app saves the levels and resets into the update mode"
        assert not dev.matching(r"UPDATE failed"), dev.lines[-10:]
        assert (kit.tree / "upmode").exists()

        dev = kit.boot()
        dev.expect(r"ABBOOT a update", timeout=15)
        dev.expect(rf"UPMODE {release} 1$")
        held_from = out.dmx.count
        dev.expect(rf"FETCH {release} to b", timeout=20)
        dev.expect(rf"UPDATE switched {release}", timeout=30)
        assert dev.wait(20) == 75
        assert out.dmx.count > held_from, "the update mode refreshed the DMX frame"
        assert out.pwm.sessions[mark[1] + 1].duty == DUTIES, "the update mode set the show's duties"
        assert kit.relay.served() == size, "each byte of the release once"
        assert not (kit.tree / "upmode").exists(), "switched: the marker is gone"

        dev = kit.boot()
        dev.expect(r"ABBOOT b trial 1", timeout=15)
        dev.expect(r"UPDATE committed b", timeout=30)
        wait_until(lambda: (updates(seen) or [None])[-1] == {"state": "committed", "why": "b", "fw": release}, 15,
                   what="committed in the controller's state")
        steps = [u["state"] for u in updates(seen)]
        # downloading: the app's (offer taken), then the update mode's (its own birth)
        assert steps[steps.index("downloading"):] == ["downloading", "downloading", "trial", "committed"], steps
        wait_until(lambda: out.dmx.count > held_from + 40, 10, what="the trial's DMX frames")
        n = assert_held(out, mark)
        print(f"\n{n} DMX frames from before the offer to the trial, every one the show's; "
              f"PWM sessions {len(out.pwm.sessions) - mark[1]}")
        dev.kill()
    finally:
        kit.close()


def test_a_refused_release_brings_the_controller_back_to_its_app_failed_with_why(
        tmp_path, broker, out, pub, collect):
    kit = make_kit(tmp_path, broker, out, pub)
    try:
        seen = collect(f"{TOPIC}/state")
        wrong, _ = kit.release("0.4.2", role="scanner")  # a scanner's release offered to a controller
        dev = showing_app(kit, out)
        mark = out.mark()
        offer(pub, kit.offer(wrong))
        assert dev.wait(20) == 75

        dev = kit.boot()
        dev.expect(r"ABBOOT a update", timeout=15)
        dev.expect(r"UPDATE failed .*wrong role: scanner", timeout=20)
        assert dev.wait(20) == 75, "back to the app"
        assert not (kit.tree / "upmode").exists()

        dev = kit.boot()
        dev.expect(r"ABBOOT a normal", timeout=15)
        wait_until(lambda: [u for u in updates(seen) if u["state"] == "failed"], 15,
                   what="failed in the controller's state")
        failed = [u for u in updates(seen) if u["state"] == "failed"][-1]
        assert failed["fw"] == wrong and "wrong role: scanner" in failed["why"], failed
        time.sleep(3)  # the retained offer is in hand again: it must not be taken again
        assert dev.proc.poll() is None, "the app runs on: the refused offer is not taken again"
        assert not (kit.tree / "upmode").exists()
        assert_held(out, mark)
        dev.kill()
    finally:
        kit.close()


def test_a_power_cut_in_the_update_mode_resumes_at_the_next_boot(tmp_path, broker, out, pub, collect):
    kit = make_kit(tmp_path, broker, out, pub, rate=16 * 1024)
    try:
        release, size = kit.release("0.4.2")
        dev = showing_app(kit, out)
        mark = out.mark()
        offer(pub, kit.offer(release))
        assert dev.wait(20) == 75

        dev = kit.boot()
        dev.expect(rf"UPMODE {release} 1$", timeout=15)
        wait_until(lambda: kit.relay.served() >= size // 2, 30, what="half the release downloaded")
        dev.kill()  # SIGKILL: a power cut in the update mode
        had = rig.slot_bytes(kit.tree)
        assert 0 < had < size
        req0 = len(kit.relay.requests())

        marker = (kit.tree / "upmode").read_bytes()
        dev = kit.boot()
        dev.expect(r"ABBOOT a update", timeout=15)
        dev.expect(rf"UPMODE {release} 2$")
        dev.expect(rf"UPDATE switched {release}", timeout=60)
        assert dev.wait(20) == 75
        asked = sum(r.end - r.start + 1 for r in kit.relay.requests()[req0:] if "/files/" in r.path)
        assert asked == size - had, f"resumed: asked for {asked} B, {size - had} B were missing"

        # a cut after the switch, before the marker's removal: the trial boots, the marker is dropped
        (kit.tree / "upmode").write_bytes(marker)
        dev = kit.boot()
        dev.expect(r"ABBOOT b trial 1", timeout=15)
        assert not (kit.tree / "upmode").exists()
        dev.expect(r"UPDATE committed b", timeout=30)
        assert_held(out, mark)
        dev.kill()
    finally:
        kit.close()


def test_the_update_mode_gives_up_after_its_boots_and_the_app_says_failed(tmp_path, broker, out, pub, collect):
    kit = make_kit(tmp_path, broker, out, pub, rate=4 * 1024)
    try:
        seen = collect(f"{TOPIC}/state")
        release, size = kit.release("0.4.2")
        dev = showing_app(kit, out)
        offer(pub, kit.offer(release))
        assert dev.wait(20) == 75
        for n in (1, 2, 3):
            dev = kit.boot()
            dev.expect(rf"UPMODE {release} {n}$", timeout=15)
            dev.kill()  # cut every time before it ends
        dev = kit.boot()
        dev.expect(rf"UPMODE {release} 4$", timeout=15)
        dev.expect(r"UPDATE failed update mode: 3 boots without an end", timeout=10)
        assert dev.wait(20) == 75
        dev = kit.boot()
        dev.expect(r"ABBOOT a normal", timeout=15)
        wait_until(lambda: [u for u in updates(seen) if u["state"] == "failed"], 15,
                   what="failed in the controller's state")
        assert [u for u in updates(seen) if u["state"] == "failed"][-1] == {
            "state": "failed", "why": "update mode: 3 boots without an end", "fw": release}
        wait_until(out.showing, 10, what="the show on, from the app")
        dev.kill()
    finally:
        kit.close()


# ------------------------------------------------------------------ the heap

def test_the_update_mode_downloads_within_the_heap_budget(tmp_path, broker, out, pub):
    """The update mode from the lighting ROMFS image (code in flash, as the app's heap test runs it) in the
    budget's 64 KB heap, downloading a paced release: its live heap (after a collection, less the image
    and the names a frozen build keeps in flash) at or below 48 KB."""
    kit = make_kit(tmp_path, broker, out, pub, rate=8 * 1024)
    try:
        release, size = kit.release("0.4.2")
        dev = showing_app(kit, out)
        offer(pub, kit.offer(release))
        assert dev.wait(20) == 75

        image = build_image("lighting", "unix", tmp_path / "lighting-ab.romfs",
                            extra=(DEVICE / "boot" / "abboot.py",))
        dev = Device.__new__(Device)
        dev.script, dev.args, dev.image_bytes = image.name, [], image.stat().st_size
        dev._spawn(["-X", f"heapsize={heap_for(rig.BUDGET, image, 'lighting')}", "-c",
                    boot_code(image, "upmode") + "upmode.run()\n"], dict(os.environ, MICROPYPATH=".frozen"), kit.tree)
        dev.expect(rf"UPDATE switched {release}", timeout=60)
        assert dev.wait(20) == 75
        off = dev.image_bytes + rom_names_bytes("lighting", image)
        heap = [(int(m.group(1)) - off, int(m.group(2)) - off) for m in dev.matching(r"HEAP (\d+) (\d+)")]
        assert len(heap) >= 2, "the heap sampled during the download"
        live, peak = max(h[0] for h in heap), max(h[1] for h in heap)
        print(f"\nupdate mode downloading {size} B: live heap max {live} B, peak {peak} B "
              f"(budget {rig.PEAK_TARGET}, {len(heap)} samples)")
        assert live <= rig.PEAK_TARGET, f"the update mode's live heap reached {live} B"
        assert peak <= rig.PEAK_TARGET, f"the update mode's heap peaked at {peak} B (uncollected garbage in)"
    finally:
        kit.close()


def test_a_marker_cut_short_is_dropped_and_the_app_runs(tmp_path, broker, out, pub):
    kit = make_kit(tmp_path, broker, out, pub)
    try:
        (kit.tree / "upmode").write_bytes(b"0\n{\"id\": \"o1\", \"rel")  # a write cut mid-way (not renamed
        # in, as the app writes it: a filesystem that lost the rename's data)
        dev = kit.boot()
        dev.expect(r"ABBOOT a update", timeout=15)
        dev.expect(r"UPMODE bad marker")
        assert dev.wait(20) == 75
        assert not (kit.tree / "upmode").exists()
        showing_app(kit, out).kill()
    finally:
        kit.close()
