"""Python stand-ins for ESP32 scanners and lighting controllers: they publish as the firmware does.

``popkit demo`` runs the real firmware (``popkit device run``, the unix-port
MicroPython); these stand-ins are its fallback where that cannot run (no
``micropython`` binary, a module that does not compile, a broker the firmware's
client cannot reach), and the demo says so at start. Same topics, same payloads
(validated by the contract), same birth/Will and outbox-until-receipt; firmware
version ``sim-0.1.0``, so the fleet shows which devices are stand-ins.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from pathlib import Path

from agent.link import FleetLink
from kits.contract import DeviceTelemetry, Event
from kits.manifest import DeviceSpec, load_manifest

log = logging.getLogger("popkit.sim.devices")

SCENES = ("doors", "set", "interval", "close")


class SimulatedEsp32:
    """One device: a link, a heap that wanders like a real one, and its role's behaviour."""

    def __init__(self, kit: str, spec: DeviceSpec, mqtt_url: str, data_dir: Path, rng: random.Random):
        self.spec = spec
        self.rng = rng
        self.link = FleetLink(kit, spec.id, spec.role, mqtt_url, data_dir / f"{spec.id}-flash.db", fw="sim-0.1.0")
        self.started = time.monotonic()
        self.scans = 0
        self.scene = "doors"

    def tick(self) -> None:
        if self.spec.role == "scanner" and self.rng.random() < 0.5:
            self.scans += 1
            ticket = f"T{self.rng.randrange(10**6):06d}"
            self.link.emit(self.spec.id, "event", Event, kind="checkin", data={"event": "DEMO-NIGHT", "ticket": ticket, "tier": "GA", "verdict": "admitted"})
        if self.spec.role == "lighting" and self.rng.random() < 0.1:
            self.scene = self.rng.choice(SCENES)
        self.link.emit(
            self.spec.id, "telemetry", DeviceTelemetry,
            uptime_s=int(time.monotonic() - self.started),
            heap_free=self.rng.randrange(52_000, 60_000),
            rssi=self.rng.randrange(-75, -45),
            outbox=len(self.link.outbox),
            scans=self.scans if self.spec.role == "scanner" else None,
            scene=self.scene if self.spec.role == "lighting" else None,
        )


def run_devices(manifest_path: str, mqtt_url: str, data_dir: Path, seed: int | None = None) -> int:
    manifest = load_manifest(manifest_path)
    rng = random.Random(seed)
    specs = [d for d in manifest.devices if d.role in ("scanner", "lighting")]
    devices = [SimulatedEsp32(manifest.id, s, mqtt_url, data_dir, rng) for s in specs]
    for d in devices:
        d.link.start()
    log.info("simulating %s on %s", ", ".join(s.id for s in specs) or "no ESP32 devices", mqtt_url)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        next_tick = {d.spec.id: 0.0 for d in devices}
        while not stop.is_set():
            now = time.monotonic()
            for d in devices:
                if now >= next_tick[d.spec.id]:
                    d.tick()
                    next_tick[d.spec.id] = now + d.spec.telemetry_s
            stop.wait(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        for d in devices:
            d.link.stop(flush_s=1.0)
    return 0
