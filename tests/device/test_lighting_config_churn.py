"""A busy venue page against the lighting app in its 64 KB heap: every override pushes a new, longer
timeline, scene commands come between, and the controller applies every one.

This once failed after 9-13 updates of ~700 bytes: the link decoded each config, the app encoded it
again and Lighting decoded it a second time (three copies and two object trees of one timeline),
so the heap ran out or fragmented. Now the link hands the payload over as received and the
timeline is read from it one window at a time (device/lib/jscan.py)."""

from __future__ import annotations

import json
import time

from tests.conftest import wait_until
from tests.device.firmware import rom_images  # noqa: F401 - fixture
from tests.device.test_lighting_app import L, TREE, cmd, controller, outputs, pub, role_config  # noqa: F401 - fixtures


def timeline(i: int, t: int, extra: int) -> dict:
    level = 10 + i % 200
    return {"format": 1, "default": "base", "scenes": {"base": {"levels": {}}, f"s{i}": {"levels": {
        "r": level, "g": level, "b": level, "w": level, "dmx": {"1": [level, level]}}}},
            "windows": [[t - 60, t + 3600, f"s{i}", 10]] + [
                [t + 3600 + k * 60, t + 3660 + k * 60, "base" if k % 2 else f"s{i}", 10] for k in range(extra)]}


def test_a_hundred_and_twenty_growing_configs_and_commands_back_to_back_are_all_applied(
        rom_images, broker, collect, pub, outputs, tmp_path):  # noqa: F811
    pwm, _dmx = outputs
    seen = collect(f"{TREE}/+")
    dev = controller(rom_images, role_config(tmp_path, broker, outputs))
    sizes = []
    try:
        wait_until(lambda: any(json.loads(p).get("online") for p in seen.on("/state")), 10, what="online")
        t = int(time.time())
        for i in range(1, 121):
            level = 10 + i % 200
            payload = json.dumps({"version": i, "ts": t * 1000, "data": timeline(i, t, i % 76)})
            sizes.append(len(payload))
            pub.publish(f"{TREE}/config", payload, qos=1, retain=True).wait_for_publish(5)
            wait_until(lambda: pwm.duties() == [level * L] * 4, 5, interval=0.002,
                       what=f"config {i} ({len(payload)} B) on the outputs (have {pwm.duties()}; "
                            f"last lines {dev.lines[-3:]})")
            pub.publish(f"{TREE}/cmd", cmd(f"c-{i}", levels={"r": 5, "g": 5, "b": 5, "w": 5}), qos=1).wait_for_publish(5)
            wait_until(lambda: pwm.duties() == [5 * L] * 4, 5, interval=0.002, what=f"command {i} on the outputs")
        assert len(dev.matching(r"CONFIG \d+ 1 None")) == 120
        assert not dev.matching(r"CONFIG \d+ 0"), "a config was refused"
        assert not dev.matching(r"MemoryError|Traceback")
        # the fleet sees the last version applied
        wait_until(lambda: any(json.loads(p).get("config_version") == 120 for p in seen.on("/state")), 5,
                   what="config_version 120 in state")
        assert max(sizes) > 3000, max(sizes)  # up to the size of a busy venue's 48 h timeline
    finally:
        dev.kill()
        pub.publish(f"{TREE}/config", b"", qos=1, retain=True).wait_for_publish(5)
