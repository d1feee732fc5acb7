"""The one place the agent decides what drives each device of a kit: real hardware or simulated parts.

Real backends by default (pyserial on the manifest's serial paths, bleak's BlueZ stack at the
BLE addresses, gpiozero's real pin factory); simulated parts only when handed in (``--simulate``:
:class:`SimulatedParts`, which simulators/kit.py builds), and then every part of the kit is
simulated, each speaking its real wire protocol (ESC/POS and VE.Direct on pseudo-terminals, JBD and
ELK-BLEDOM frames over a simulated bleak backend, gpiozero's MockFactory) so the same drivers run
unchanged. A part that cannot be opened on real hardware is reported (a fault at power-up), never
swapped for a simulator.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kits.manifest import DeviceSpec, KitManifest

log = logging.getLogger("popkit.agent.backends")


class SimulatedParts(Protocol):
    """Stand-ins for a kit's hosted hardware, handed to :func:`open_hardware` the way bleak takes a
    backend or gpiozero a pin factory. simulators/kit.py builds one from a scenario; the agent never
    imports the simulators, so whoever wants a simulated kit (``--simulate``, the tests) hands it in."""

    sims: dict[str, Any]  # device -> its simulator, for scenarios and tests

    def printer_port(self, spec: DeviceSpec) -> str: ...  # a serial path answering ESC/POS

    def vedirect_port(self, spec: DeviceSpec) -> str: ...  # a serial path sending VE.Direct

    def jbd_backend(self, spec: DeviceSpec) -> Any: ...  # a bleak backend with a JBD BMS at spec.address

    def lamp_backend(self, spec: DeviceSpec) -> Any: ...  # a bleak backend with an ELK-BLEDOM lamp there

    def close(self) -> None: ...


@dataclass
class Hardware:
    """What drives each hosted device; ``sims`` are the simulators behind them (none on hardware)."""

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


def open_hardware(manifest: KitManifest, parts: SimulatedParts | None = None) -> Hardware:
    """Open every hosted device of ``manifest``: on hardware, or all simulated when ``parts`` is given."""
    from agent.batteries import JbdBattery, VeDirectBattery

    hw = Hardware(manifest, simulated=parts is not None)
    if any(d.bus_kind == "gpio" for d in manifest.devices):
        from agent.drivers.relay import GpioError, open_pin_factory

        try:
            hw.pin_factory = open_pin_factory(simulate=hw.simulated)
            hw._closers.append(hw.pin_factory.close)
        except GpioError as exc:
            for d in manifest.devices:
                if d.bus_kind == "gpio":
                    hw.problems[d.id] = str(exc)
    if parts is not None:
        hw.sims = parts.sims
        hw._closers.append(parts.close)
    for spec in manifest.devices:
        try:
            if spec.role == "printer":
                hw.printer_ports[spec.id] = parts.printer_port(spec) if parts is not None else spec.address
            elif spec.role == "powerbank" and spec.bus_kind == "serial":
                path = parts.vedirect_port(spec) if parts is not None else spec.address
                hw.batteries[spec.id] = VeDirectBattery(spec.id, path)
            elif spec.role == "powerbank" and spec.bus_kind == "ble":
                backend = parts.jbd_backend(spec) if parts is not None else None
                hw.batteries[spec.id] = JbdBattery(spec.id, spec.address, backend)
            elif spec.role == "light" and spec.bus_kind == "gpio":
                if hw.pin_factory is not None:
                    from agent.drivers.relay import RelayLight

                    hw.lights[spec.id] = RelayLight.from_spec(spec, hw.pin_factory)
            elif spec.role == "light" and spec.bus_kind == "ble":
                from agent.drivers.lamp import ble_lamp

                backend = parts.lamp_backend(spec) if parts is not None else None
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
