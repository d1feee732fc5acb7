"""The one place the agent decides what drives each device of a kit: real hardware or a simulator.

Real backends by default (pyserial on the manifest's serial paths, bleak's BlueZ stack at the
BLE addresses, gpiozero's real pin factory); simulators only when asked (``--simulate``), and
then every part of the kit is simulated, each speaking its real wire protocol (ESC/POS and
VE.Direct on pseudo-terminals, JBD and ELK-BLEDOM frames over a simulated bleak backend,
gpiozero's MockFactory) so the same drivers run unchanged. A part that cannot be opened on real
hardware is reported (a fault at power-up), never swapped for a simulator.

A :class:`Scenario` sets the simulated kit's condition, for demos and tests:
``paper=out,cover=open,soc=35,load=12,vanish=lr-lamp-1+lr-printer``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kits.manifest import DeviceSpec, KitManifest

log = logging.getLogger("popkit.agent.backends")


class ScenarioError(ValueError):
    pass


@dataclass
class Scenario:
    paper: str = "ok"  # ok | near_end | out
    cover_open: bool = False
    soc: float = 87.0  # % of every simulated pack
    load_a: float = 6.0  # A drawn from every simulated pack
    vanish: set[str] = field(default_factory=set)  # devices switched off / out of range / not started

    @classmethod
    def parse(cls, text: str | None) -> "Scenario":
        s = cls()
        for part in filter(None, (p.strip() for p in (text or "").split(","))):
            key, _, value = part.partition("=")
            try:
                if key == "paper" and value in ("ok", "near_end", "out"):
                    s.paper = value
                elif key == "cover" and value in ("open", "closed"):
                    s.cover_open = value == "open"
                elif key == "soc":
                    s.soc = float(value)
                    if not 0 <= s.soc <= 100:
                        raise ValueError
                elif key == "load":
                    s.load_a = float(value)
                elif key == "vanish" and value:
                    s.vanish |= set(value.split("+"))
                else:
                    raise ValueError
            except ValueError:
                raise ScenarioError(f"simulation scenario {part!r}: expected paper=ok|near_end|out, cover=open|closed, "
                                    "soc=0..100, load=AMPS or vanish=ID[+ID...]") from None
        return s


@dataclass
class Hardware:
    """What drives each hosted device; ``sims`` are the simulators behind them (None on hardware)."""

    manifest: KitManifest
    simulated: bool
    printer_ports: dict[str, str] = field(default_factory=dict)  # device -> serial path (a pty when simulated)
    batteries: dict[str, Any] = field(default_factory=dict)  # device -> VeDirectBattery | JbdBattery
    lights: dict[str, Any] = field(default_factory=dict)  # device -> RelayLight | BleLamp
    pin_factory: Any = None
    panel_spec: DeviceSpec | None = None
    sims: dict[str, Any] = field(default_factory=dict)  # device -> its simulator, for scenarios and tests
    problems: dict[str, str] = field(default_factory=dict)  # device -> why it could not be opened
    _closers: list = field(default_factory=list)

    async def close(self) -> None:
        for light in self.lights.values():
            close = getattr(light, "close", None)
            if close is not None:
                r = close()
                if hasattr(r, "__await__"):
                    await r
        for b in self.batteries.values():
            await b.close()
        for c in reversed(self._closers):
            try:
                c()
            except Exception:  # noqa: BLE001 - closing everything matters more than one failure
                log.exception("closing a backend failed")


def open_hardware(manifest: KitManifest, scenario: Scenario | None = None) -> Hardware:
    """Open every hosted device of ``manifest``: on hardware, or all simulated when ``scenario`` is given."""
    from agent.batteries import JbdBattery, VeDirectBattery

    hw = Hardware(manifest, simulated=scenario is not None)
    radio = None
    if any(d.bus_kind == "gpio" for d in manifest.devices):
        from agent.drivers.relay import GpioError, open_pin_factory

        try:
            hw.pin_factory = open_pin_factory(simulate=hw.simulated)
            hw._closers.append(hw.pin_factory.close)
        except GpioError as exc:
            for d in manifest.devices:
                if d.bus_kind == "gpio":
                    hw.problems[d.id] = str(exc)
    for spec in manifest.devices:
        gone = scenario is not None and spec.id in scenario.vanish
        try:
            if spec.role == "printer":
                if hw.simulated:
                    from simulators.printer import PrinterSimulator

                    sim = PrinterSimulator()
                    sim.start()
                    hw._closers.append(sim.stop)
                    if scenario.paper == "out":
                        sim.paper_out()
                    elif scenario.paper == "near_end":
                        sim.paper_low()
                    if scenario.cover_open:
                        sim.open_cover()
                    if gone:
                        sim.vanish()
                    hw.sims[spec.id] = sim
                    hw.printer_ports[spec.id] = sim.path
                else:
                    hw.printer_ports[spec.id] = spec.address
            elif spec.role == "powerbank" and spec.bus_kind == "serial":
                path = spec.address
                if hw.simulated:
                    from simulators.vedirect import VEDirectSimulator

                    sim = VEDirectSimulator(interval=min(1.0, spec.telemetry_s), soc=scenario.soc / 100,
                                            load_a=scenario.load_a)
                    if not gone:
                        sim.start()
                        hw._closers.append(sim.stop)
                    hw.sims[spec.id] = sim
                    path = sim.path if not gone else f"/dev/vanished-{spec.id}"  # unplugged: nothing there
                hw.batteries[spec.id] = VeDirectBattery(spec.id, path)
            elif spec.role == "powerbank" and spec.bus_kind == "ble":
                backend = None
                if hw.simulated:
                    from simulators.ble import SimulatedRadio
                    from simulators.jbd import simulated_jbd

                    radio = radio or SimulatedRadio()
                    backend, sim = simulated_jbd(spec.address, radio, soc=scenario.soc / 100, load_a=scenario.load_a)
                    if gone:
                        sim.vanish()
                    hw.sims[spec.id] = sim
                hw.batteries[spec.id] = JbdBattery(spec.id, spec.address, backend)
            elif spec.role == "light" and spec.bus_kind == "gpio":
                if hw.pin_factory is not None:
                    from agent.drivers.relay import RelayLight

                    hw.lights[spec.id] = RelayLight.from_spec(spec, hw.pin_factory)
            elif spec.role == "light" and spec.bus_kind == "ble":
                from agent.drivers.lamp import ble_lamp

                backend = None
                if hw.simulated:
                    from simulators.ble import SimulatedRadio
                    from simulators.lamp import simulated_lamp

                    radio = radio or SimulatedRadio()
                    backend, sim = simulated_lamp(spec.address, radio)
                    if gone:
                        sim.vanish()
                    hw.sims[spec.id] = sim
                hw.lights[spec.id] = ble_lamp(spec.address, backend=backend)
            elif spec.role == "panel" and hw.pin_factory is not None:
                hw.panel_spec = spec
        except Exception as exc:  # noqa: BLE001 - one part that cannot open must not stop the kit
            log.error("%s: cannot open %s on %s: %s", spec.id, spec.role, spec.bus, exc)
            hw.problems[spec.id] = str(exc)[:160]
    if hw.simulated:
        log.warning("SIMULATED kit %s: no hardware is driven (%s)", manifest.id, ", ".join(sorted(hw.sims)) or "none")
    return hw


def data_dir_for(base: Path, manifest: KitManifest) -> Path:
    path = base / manifest.id
    path.mkdir(parents=True, exist_ok=True)
    return path
