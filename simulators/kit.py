"""A simulated kit's hosted parts, in the condition a :class:`Scenario` sets, for the agent to drive.

The agent takes these the way bleak takes a backend or gpiozero a pin factory
(``agent.backends.open_hardware(manifest, SimulatedKit(scenario))``): each part speaks its real
wire protocol (ESC/POS and VE.Direct on pseudo-terminals, JBD and ELK-BLEDOM frames over a
simulated bleak backend), so the agent's real drivers run unchanged, and the agent never imports
this package. The command line (``--simulate``) and the tests build one and hand it in.

A scenario, for demos and tests: ``paper=out,cover=open,soc=35,load=12,vanish=lr-lamp-1+lr-printer``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from kits.manifest import DeviceSpec

log = logging.getLogger("popkit.simulators.kit")


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


class SimulatedKit:
    """The parts ``agent.backends.SimulatedParts`` asks for, each started when first asked for (the BLE
    ones inside the agent's loop, where their backend runs) and all stopped by :meth:`close`."""

    def __init__(self, scenario: Scenario | None = None) -> None:
        self.scenario = scenario or Scenario()
        self.sims: dict[str, Any] = {}  # device -> its simulator, for scenarios and tests
        self._radio = None  # one simulated BLE radio for every BLE part, as a Pi has one
        self._stops: list = []

    def _gone(self, spec: DeviceSpec) -> bool:
        return spec.id in self.scenario.vanish

    def printer_port(self, spec: DeviceSpec) -> str:
        from simulators.printer import PrinterSimulator

        s = self.scenario
        sim = PrinterSimulator()
        sim.start()
        self._stops.append(sim.stop)
        if s.paper == "out":
            sim.paper_out()
        elif s.paper == "near_end":
            sim.paper_low()
        if s.cover_open:
            sim.open_cover()
        if self._gone(spec):
            sim.vanish()
        self.sims[spec.id] = sim
        return sim.path

    def vedirect_port(self, spec: DeviceSpec) -> str:
        from simulators.vedirect import VEDirectSimulator

        sim = VEDirectSimulator(interval=min(1.0, spec.telemetry_s), soc=self.scenario.soc / 100,
                                load_a=self.scenario.load_a)
        self.sims[spec.id] = sim
        if self._gone(spec):
            return f"/dev/vanished-{spec.id}"  # unplugged: nothing there
        sim.start()
        self._stops.append(sim.stop)
        return sim.path

    def jbd_backend(self, spec: DeviceSpec) -> Any:
        from simulators.jbd import simulated_jbd

        backend, sim = simulated_jbd(spec.address, self._ble_radio(), soc=self.scenario.soc / 100,
                                     load_a=self.scenario.load_a)
        if self._gone(spec):
            sim.vanish()
        self.sims[spec.id] = sim
        return backend

    def lamp_backend(self, spec: DeviceSpec) -> Any:
        from simulators.lamp import simulated_lamp

        backend, sim = simulated_lamp(spec.address, self._ble_radio())
        if self._gone(spec):
            sim.vanish()
        self.sims[spec.id] = sim
        return backend

    def _ble_radio(self):
        from simulators.ble import SimulatedRadio

        self._radio = self._radio or SimulatedRadio()
        return self._radio

    def close(self) -> None:
        for stop in reversed(self._stops):
            try:
                stop()
            except Exception:  # noqa: BLE001 - stopping every simulator matters more than one failure
                log.exception("stopping a simulator failed")
        self._stops.clear()
