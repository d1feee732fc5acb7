"""The agent's hosted lights follow their compiled timeline (issue 6), against a real broker.

The agent runs in this process with simulated hardware (a BLE lamp on the simulated radio, a
safety relay on gpiozero's MockFactory); timelines arrive as the retained `config` the fleet
pushes, built around int(time.time()) so window edges come within seconds.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

from agent.backends import open_hardware
from agent.daemon import Agent
from agent.lightshow import lamp_target
from agent.link import FleetLink
from agent.statewatch import StateWatch
from kits.contract import decode
from kits.manifest import load_manifest
from simulators.kit import SimulatedKit
from tests.conftest import publisher, wait_until

KIT = """
id = "lk"
name = "Lights kit"
agent = "lk-agent"

[[devices]]
id = "lk-flood"
role = "light"
model = "relay"
bus = "gpio:17"
telemetry_s = 5
expect = { safety = true }

[[devices]]
id = "lk-lamp"
role = "light"
model = "elk-bledom"
bus = "ble:BE:16:02:00:11:01"
telemetry_s = 5
"""

SCENES = {"dark": {"levels": {}},
          "red": {"levels": {"r": 255, "dmx": {"1": [255, 0, 0]}}, "fade_ms": 500},
          "warm": {"levels": {"r": 255, "g": 128}},
          "blue": {"levels": {"b": 255}}}


class RunningAgent:
    """An Agent on its own loop in a thread, with its link, state watch and simulated hardware."""

    def __init__(self, broker_url: str, tmp_path, data):
        path = tmp_path / "kit.toml"
        path.write_text(KIT)
        self.manifest = load_manifest(path)
        hosted = {s.id: s.role for s in self.manifest.devices if s.hosted}
        self.link = FleetLink("lk", "lk-agent", "agent", broker_url, data / "outbox.db", hosted=hosted).start()
        self.watch = StateWatch("lk", broker_url).start()
        self.hw = open_hardware(self.manifest, SimulatedKit())
        self.agent = Agent(self.manifest, self.link, self.hw, self.watch, data, simulate=True)
        self.loop = asyncio.new_event_loop()
        self.stopped = False

        async def main():
            try:
                await self.agent.run()
            finally:
                await self.hw.close()

        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(main(),), daemon=True)
        self.thread.start()

    @property
    def lamp(self):
        return self.hw.sims["lk-lamp"]

    @property
    def flood(self):
        return self.hw.lights["lk-flood"]

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.loop.call_soon_threadsafe(self.agent.stop)
        self.thread.join(15)
        self.watch.stop()
        self.link.stop()


@pytest.fixture
def run_agent(broker, tmp_path):
    made = []

    def make(data=None):
        data = data or tmp_path / "agent"
        data.mkdir(exist_ok=True)
        a = RunningAgent(broker.url, tmp_path, data)
        made.append(a)
        return a

    yield make
    for a in made:
        a.stop()


def config(version: int, **timeline) -> bytes:
    return json.dumps({"version": version, "ts": int(time.time() * 1000),
                       "data": {"format": 1, "scenes": SCENES, **timeline}}).encode()


def push(pub, device: str, payload: bytes) -> None:
    pub.publish(f"popkit/v1/lk/{device}/config", payload, qos=1, retain=True).wait_for_publish(5)


def config_version(collector, device: str):
    states = collector.on(f"/{device}/state")
    return decode("state", states[-1]).config_version if states else None


def shows(lamp, rgb) -> bool:
    return lamp.is_on and lamp.rgb == rgb


def test_a_retained_timeline_reaches_lamp_and_relay_the_floor_holds_and_bad_ones_are_refused(broker, collect,
                                                                                            run_agent):
    t = int(time.time())
    states = collect("popkit/v1/lk/+/state")
    events = collect("popkit/v1/lk/lk-lamp/event")
    lamp_telemetry = collect("popkit/v1/lk/lk-lamp/telemetry")
    pub = publisher(broker.url)
    try:
        # (a) retained before the agent starts, as the fleet leaves it
        push(pub, "lk-lamp", config(3, default="dark", windows=[[t - 60, t + 3600, "warm", 10]]))
        push(pub, "lk-flood", config(1, default="dark", windows=[[t - 60, t + 3600, "dark", 10]]))
        a = run_agent()
        wait_until(lambda: shows(a.lamp, (255, 128, 0)) and a.lamp.brightness_pct == 100, 15, what="the lamp warm")
        wait_until(lambda: not a.flood.is_on, 10, what="the relay off in a dark scene with no floor")
        wait_until(lambda: config_version(states, "lk-lamp") == 3, 10, what="lk-lamp reporting config_version 3")
        wait_until(lambda: config_version(states, "lk-flood") == 1, 10, what="lk-flood reporting config_version 1")
        assert (a.agent.data / "lk-lk-lamp-timeline.json").exists()
        # the fleet's controllers view shows the scene each light reports, as for a lighting controller
        wait_until(lambda: any(getattr(decode("telemetry", p), "scene", None) == "warm" for p in lamp_telemetry.on("/telemetry")), 10,
                   what="the lamp's telemetry naming scene 'warm'")

        # (d) the same dark scene while the venue is open: the floor keeps the safety relay lit
        push(pub, "lk-flood", config(2, default="dark", windows=[[t - 60, t + 3600, "dark", 10]],
                                     floor={"levels": {"w": 90}, "open": [[t - 60, t + 3600]]}))
        wait_until(lambda: a.flood.is_on, 10, what="the safety relay lit by the floor")
        wait_until(lambda: config_version(states, "lk-flood") == 2, 10, what="lk-flood reporting config_version 2")

        # (e) a timeline that does not validate changes nothing and is reported as a fault
        push(pub, "lk-lamp", config(4, default="dark", windows=[[t - 60, t + 3600, "disco", 10]]))
        wait_until(lambda: events.on("/event"), 10, what="the fault event")
        [fault] = [decode("event", p) for p in events.on("/event")]
        assert fault.kind == "fault"
        assert fault.data == {"what": "config", "version": 4, "detail": "windows[0]: unknown scene 'disco'"}
        assert shows(a.lamp, (255, 128, 0))
        assert a.agent.lightshow.shows["lk-lamp"].version == 3
        assert json.loads((a.agent.data / "lk-lk-lamp-timeline.json").read_text())["version"] == 3
        assert config_version(states, "lk-lamp") == 3
        # one that does not even fit the contract is counted by the link, which carries on
        push(pub, "lk-lamp", b"{not json")
        wait_until(lambda: a.link.configs_bad == 1, 10, what="the malformed config counted")
        assert a.link.connected.is_set() and shows(a.lamp, (255, 128, 0))
    finally:
        for d in ("lk-lamp", "lk-flood"):
            push(pub, d, b"")
        pub.loop_stop()


def test_with_no_broker_the_lamp_follows_its_timeline_and_a_restart_shows_the_current_scene(broker, collect,
                                                                                            run_agent, tmp_path):
    t = int(time.time())
    edge = t + 8
    states = collect("popkit/v1/lk/lk-lamp/state")
    pub = publisher(broker.url)
    try:
        push(pub, "lk-lamp", config(5, windows=[[t - 60, edge, "red", 10], [edge, t + 3600, "blue", 10]]))
    finally:
        pub.loop_stop()
    a = run_agent()
    wait_until(lambda: shows(a.lamp, (255, 0, 0)), 15, what="the lamp red")
    wait_until(lambda: config_version(states, "lk-lamp") == 5, 10, what="config_version 5")

    # a crew member's `set` holds until the timeline's answer next changes
    cmd_pub = publisher(broker.url)
    try:
        now = int(time.time() * 1000)
        cmd = {"id": "c-green", "ts": now, "expires": now + 30_000, "action": "set", "args": {"rgb": [0, 255, 0]}}
        cmd_pub.publish("popkit/v1/lk/lk-lamp/cmd", json.dumps(cmd), qos=1).wait_for_publish(5)
    finally:
        cmd_pub.loop_stop()
    wait_until(lambda: shows(a.lamp, (0, 255, 0)), 10, what="the command's green")
    time.sleep(1.5)  # the runner re-evaluates every second: still the same answer, so green stays
    if time.time() < edge:
        assert shows(a.lamp, (0, 255, 0))

    # (b) the broker goes away; the window edge passes; the lamp changes on its own clock
    broker.stop()
    wait_until(lambda: not a.link.connected.is_set(), 10, what="the link noticing the broker gone")
    wait_until(lambda: shows(a.lamp, (0, 0, 255)), 20, what="the next window's blue with no broker")
    assert not broker.running

    # (c) the agent restarted from its data dir, broker still down: the current scene at once
    data = a.agent.data
    a.stop()
    b = run_agent(data)
    assert b.agent.lightshow.shows["lk-lamp"].version == 5  # loaded before anything else ran
    wait_until(lambda: shows(b.lamp, (0, 0, 255)), 5, what="blue from disk after a restart, broker down")
    assert not b.link.connected.is_set()
    broker.start()
    wait_until(lambda: b.link.connected.is_set(), 20, what="the link back")
    wait_until(lambda: config_version(states, "lk-lamp") == 5, 10, what="config_version 5 after the restart")
    wait_until(lambda: b.agent.last_report is not None, 20, what="the self-test done (the agent stops after it)")
    wait_until(lambda: shows(b.lamp, (0, 0, 255)), 5, what="blue again after the self-test's blink")
    push_clear = publisher(broker.url)
    try:
        push(push_clear, "lk-lamp", b"")
    finally:
        push_clear.loop_stop()


def test_a_lamp_fades_into_the_next_window_and_a_command_stops_the_fade(broker, run_agent):
    """A scene's fade_ms holds on the agent's lamps as on the controller's PWM: in steps, here 4 a
    second (each a BLE write or two); a relay only switches. A command mid-fade wins at once."""
    scenes = {**SCENES, "slow": {"levels": {"b": 255}, "fade_ms": 2000}, "slower": {"levels": {"r": 255}, "fade_ms": 4000}}

    def cfg(version, windows):
        return json.dumps({"version": version, "ts": int(time.time() * 1000),
                           "data": {"format": 1, "scenes": scenes, "windows": windows}}).encode()

    def watch(lamp, seconds):
        seen, end = [], time.monotonic() + seconds
        while time.monotonic() < end:
            state = (lamp.is_on, lamp.rgb, lamp.brightness_pct)
            if not seen or seen[-1][1] != state:
                seen.append((time.monotonic(), state))
            time.sleep(0.01)
        return seen

    t = int(time.time())
    edge = t + 4
    pub = publisher(broker.url)
    try:
        push(pub, "lk-lamp", cfg(1, [[t - 60, edge, "red", 10], [edge, t + 3600, "slow", 10]]))
        a = run_agent()
        wait_until(lambda: shows(a.lamp, (255, 0, 0)), 15, what="the lamp red before the edge")
        seen = watch(a.lamp, edge + 3.5 - time.time())
        red, blue = (True, (255, 0, 0), 100), (True, (0, 0, 255), 100)
        states = [s for _, s in seen]
        assert states[-1] == blue, seen
        between = states[states.index(red) + 1:-1] if red in states else states[:-1]
        assert len(between) >= 4, seen  # red -> magenta-ish, dimmer -> blue, not a cut
        assert any(rgb[0] and rgb[2] for _, rgb, _ in between), seen  # both colours at once mid-way
        first = next(ts for ts, s in seen if s != red)
        last = next(ts for ts, s in seen if s == blue)
        assert last - first >= 1.0, seen  # 2 s of fade in 8 steps: well over a second from first to last

        # a new timeline fades to "slower" (4 s); a crew member's `set` mid-way takes the lamp for good
        edge2 = int(time.time()) + 2
        push(pub, "lk-lamp", cfg(2, [[t - 60, edge2, "slow", 10], [edge2, t + 3600, "slower", 10]]))
        wait_until(lambda: a.lamp.rgb not in ((0, 0, 255), (255, 0, 0)), 10, interval=0.01, what="the fade under way")
        now = int(time.time() * 1000)
        cmd = {"id": "c-mid-fade", "ts": now, "expires": now + 30_000, "action": "set", "args": {"rgb": [0, 255, 0]}}
        pub.publish("popkit/v1/lk/lk-lamp/cmd", json.dumps(cmd), qos=1).wait_for_publish(5)
        wait_until(lambda: shows(a.lamp, (0, 255, 0)), 10, what="the command's green")
        after = watch(a.lamp, 2.0)  # the fade would have stepped 8 more times
        assert all(s[1] == (0, 255, 0) for _, s in after), after
    finally:
        push(pub, "lk-lamp", b"")
        pub.loop_stop()


def test_what_a_lamp_makes_of_a_look():
    # Colour scaled to full, brightness the highest level; white alone is white. (What the timeline
    # says is on is the firmware's own answer: tests/test_agent_firmware_lib.py.)
    assert lamp_target((0, 0, 0, 90)).rgb == (255, 255, 255) and lamp_target((0, 0, 0, 0)).on is False
    assert lamp_target((128, 64, 0, 0)).rgb == (255, 128, 0) and lamp_target((128, 64, 0, 0)).level == 128
