"""``popkit kit up --simulate``: a whole kit on this machine, for training and tests.

The command line composes it and hands agent/kitup.py only what a kit up needs (a broker URL and
the hosted parts' simulators), so the agent imports neither the demo nor the broker helper: a
broker of its own unless one is named, the scanners and lighting controllers as their real
firmware in the unix port (``popkit device run``) against their simulators (the demo's bench),
and the hosted parts in the condition the scenario sets (simulators/kit.py).
"""

from __future__ import annotations

import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

from kits.manifest import KitManifest
from simulators.kit import Scenario, SimulatedKit


def simulated_kit(manifest: KitManifest, mqtt_url: str | None, data_dir: Path, scenario: Scenario,
                  stack: ExitStack) -> tuple[str, SimulatedKit]:
    """Start what the kit's agent does not drive (stopped by ``stack``); the broker's URL and the
    hosted parts for kit_up."""
    if mqtt_url is None:
        from popkit.broker import embedded_broker

        broker = embedded_broker(data_dir=data_dir / "broker").start()
        stack.callback(broker.stop)
        mqtt_url = broker.url
    start_firmware(manifest, mqtt_url, data_dir, scenario.vanish, stack)
    return mqtt_url, SimulatedKit(scenario)


def start_firmware(manifest: KitManifest, mqtt_url: str, data_dir: Path, skip: set[str], stack: ExitStack) -> None:
    """The kit's scanners and lighting controllers as their real firmware, against their simulators."""
    from popkit.demo import FIRMWARE_ROLES, set_up_bench

    esp32s = [d for d in manifest.devices if d.role in FIRMWARE_ROLES and d.id not in skip]
    if not esp32s:
        return
    bench = set_up_bench(manifest, mqtt_url, data_dir, base="")
    stack.callback(bench.close)
    (data_dir / "logs").mkdir(exist_ok=True)
    for spec in esp32s:
        out = open(data_dir / "logs" / f"{spec.id}.log", "w")
        stack.callback(out.close)
        proc = subprocess.Popen([sys.executable, "-m", "popkit.cli", "device", "run", "--role", spec.role,
                                 "--config", str(bench.configs[spec.id])], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)

        def stop(p=proc) -> None:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        stack.callback(stop)
