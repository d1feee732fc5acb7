"""A door's field update, timed and measured: the real scanner firmware in the unix-port MicroPython takes a
release from its kit's cache while it keeps scanning.

    python -m bench.update_device [--quick]

The kit is built from real parts by tests/device/updaterig.py: the scanner flashed as `popkit device flash`
stages it, a newer release of it built and signed as kits/release.py lays one out, the kit's cache
(agent/updates/cache.py) and the agent's kit-network server (agent/updates/server.py), a Mosquitto of the
bench's own, the offer retained on the door's update topic as the agent publishes it. A simulated crowd
holds up a fresh ticket every ``SCAN_EVERY_S`` while the door is up.

- ``device_update_s``: from the offer's publication (11 s after the door's boot, past its settle window, which
  a download waits for) to the door's ``UPDATE committed``: the download, the
  switch, the reset (the bench restarts the process at once, as a board restarts), the boot on trial and
  the healthy window. The trial's window is shortened in the device's config for the bench (``trial_s``:
  3 s, 2 s with --quick, instead of the 60 s default), and settle() waits its 10 s fast-boot window first:
  on a board the figure is ~57 s longer.
- ``scans_during_update``: scans the door answered within that span; ``scans_unanswered``: scans held up
  while the door was up that got no lamp within 5 s. Nobody scans from the door's ``UPDATE switched``
  (it then leaves its broker and resets) until the restarted firmware has its UART again.
- ``device_peak_heap_kb``: the door run from its ROMFS image as the heap tests run it, its live heap
  (MEM lines: after a collection) at its highest while it downloads and scans, less the image and the
  names a frozen build keeps in flash; ``device_idle_heap_kb`` the same before the offer. The process heap
  is the firmware's real one (``HEAP_ROOM``: 64 KB, as the heap tests give it): the download must complete
  there (``heap_run_failed`` says why it did not); the acceptance on the peak is <= 48 (docs/updates.md,
  "The ESP32's download").
- ``bundle_kb``: the release's files.

The download runs through the rig's relay at ``RATE`` bytes a second (an ESP32 on the kit's Wi-Fi,
writing its flash; the loopback would finish before a single scan), at ``HEAP_RATE`` for the heap run,
whose door prints its heap every 2 s. Progress on stderr; the last stdout
line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

from popkit.broker import MosquittoBroker
from popkit.romfs import names_bytes
from simulators.scanner import ScannerSim
from tests.conftest import publisher
from tests.device import updaterig as rig
from tests.device.firmware import Device

RATE = 32 * 1024
HEAP_RATE = 6 * 1024  # the heap run's pace: the download spans several of the door's heap samples (every 2 s)
SCAN_EVERY_S = 0.2
HEAP_ROOM = rig.BUDGET  # the ROMFS run's heap: the firmware's real 64 KB (the download completes there since it holds no file table)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Crowd:
    """Fresh tickets at the door, one every SCAN_EVERY_S while the firmware is connected to its UART."""

    def __init__(self, kit: rig.Kit, sim: ScannerSim):
        self.kit, self.sim = kit, sim
        self.answered: list[float] = []  # time of each lamp
        self.unanswered = 0
        self._stop = threading.Event()
        self.paused = False  # while the door resets: no board answers then, nobody holds a ticket up
        self._n = 0
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.wait(SCAN_EVERY_S):
            if self.paused or not self.sim._conn:  # (the simulator's UART link) the door is down
                continue
            self._n += 1
            mark = self.sim.mark()
            try:
                self.sim.scan(self.kit.ticket(100_000 + self._n).encode())
                self.sim.wait_signal("LED", after=mark, timeout=5)
                self.answered.append(time.monotonic())
            except (TimeoutError, OSError):
                if self.sim._conn:
                    self.unanswered += 1

    def stop(self) -> None:
        self._stop.set()
        self._t.join(10)


def _wait(dev: Device, pattern: str, timeout: float) -> re.Match:
    deadline = time.monotonic() + timeout
    rx = re.compile(pattern)
    while time.monotonic() < deadline:
        for line in list(dev.lines):
            m = rx.match(line)
            if m:
                return m
        if dev.proc.poll() is not None and not any(rx.match(x) for x in dev.lines):
            raise RuntimeError(f"the door exited ({dev.proc.poll()}) before /{pattern}/: {dev.lines[-10:]}")
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for /{pattern}/: {dev.lines[-10:]}")


def _update(tmp: Path, broker: MosquittoBroker, quick: bool) -> dict:
    """The timed update, the door booted from its flashed tree as a board boots."""
    sim = ScannerSim()
    kit = rig.Kit(tmp, broker.port, sim.port, trial_s=2 if quick else 3, rate=RATE)
    pub = publisher(broker.url)
    try:
        release, size = kit.release("0.3.2")
        dev = kit.door_from_tree()
        _wait(dev, r"READY", 20)
        sim.wait_connected(1, 10)
        crowd = Crowd(kit, sim)
        # past the boot's settle window (10 s): a download waits for it (fetch.py: the boot stage's abboot
        # and the download are never on the heap together), and a door offered a release has been up a while
        time.sleep(11)
        t0 = time.monotonic()
        pub.publish(rig.topic("update"), kit.offer(release), qos=1, retain=True).wait_for_publish(5)
        _wait(dev, r"UPDATE switched", 60)
        crowd.paused = True  # the door leaves its broker, then resets
        conns = sim.connections
        if dev.wait(20) != 75:
            raise RuntimeError(f"the door did not reset into its new slot: {dev.lines[-10:]}")
        t_switch = time.monotonic()
        _log(f"downloaded and switched in {t_switch - t0:.1f} s")
        dev = kit.door_from_tree()  # what a board does on reset
        sim.wait_connected(conns + 1, 20)
        crowd.paused = False
        _wait(dev, r"UPDATE committed", 60)
        t1 = time.monotonic()
        dev.kill()
        crowd.stop()
        pub.publish(rig.topic("update"), b"", qos=1, retain=True).wait_for_publish(5)  # withdrawn, as the agent does
        return {"bundle_kb": round(size / 1024, 1), "device_update_s": round(t1 - t0, 1),
                "download_s": round(t_switch - t0, 2),
                "scans_during_update": sum(1 for t in crowd.answered if t0 <= t <= t1),
                "scans_unanswered": crowd.unanswered}
    finally:
        pub.disconnect()
        kit.close()
        sim.close()
        for d in list(Device.running):
            d.kill()


def _heap(tmp: Path, broker: MosquittoBroker) -> dict:
    """The live heap peak while the door downloads and scans, run from its ROMFS image."""
    sim = ScannerSim()
    kit = rig.Kit(tmp, broker.port, sim.port, rate=HEAP_RATE)
    pub = publisher(broker.url)
    try:
        release, _size = kit.release("0.3.2")
        image = kit.image()
        dev = Device.from_rom(image, "scanner.json", budget=HEAP_ROOM, cwd=kit.tree, role="scanner")
        _wait(dev, r"READY", 20)
        sim.wait_connected(1, 10)
        crowd = Crowd(kit, sim)
        time.sleep(11)  # past the boot stage's first 10 s (its settle() holds abboot meanwhile)
        before = max(int(m.group(1)) for m in dev.matching(r"MEM (\d+)"))
        mark = len(dev.lines)
        pub.publish(rig.topic("update"), kit.offer(release), qos=1, retain=True).wait_for_publish(5)
        _wait(dev, r"UPDATE (switched|failed)", 60)
        crowd.stop()
        dev.wait(20)
        failed = dev.matching(r"UPDATE failed (.*)")
        during = [int(x.split()[1]) for x in dev.lines[mark:] if x.startswith("MEM ")]
        off = image.stat().st_size + names_bytes("scanner", image)
        return {"device_peak_heap_kb": round((max(during + [before]) - off) / 1024, 1),
                "device_idle_heap_kb": round((before - off) / 1024, 1),
                "heap_run_failed": failed[0].group(1) if failed else None}
    finally:
        pub.disconnect()
        kit.close()
        sim.close()
        for d in list(Device.running):
            d.kill()


def measure(quick: bool) -> dict:
    """{"bundle_kb", "device_update_s", "device_peak_heap_kb", "scans_during_update", "scans_unanswered"}
    (and a few figures beside them: see the module's text)."""
    with tempfile.TemporaryDirectory(prefix="bench-update-device-") as d:
        tmp = Path(d)
        broker = MosquittoBroker(data_dir=tmp / "broker")
        broker.start()
        try:
            (tmp / "update").mkdir()
            out = _update(tmp / "update", broker, quick)
            _log(f"update: {out}")
            (tmp / "heap").mkdir()
            heap = _heap(tmp / "heap", broker)
            _log(f"heap: {heap}")
        finally:
            broker.close()
    return {**out, **heap}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a shorter trial window")
    args = ap.parse_args(argv)
    print(json.dumps({"bench": "update_device", **measure(args.quick)}))


if __name__ == "__main__":
    main()
