"""``popkit agent run``: the Pi agent's main loop (asyncio).

For each hosted device in the kit manifest it runs a driver task that keeps the
latest reading, and a telemetry task that emits it through the link at the
device's cadence. Blocking serial I/O runs in worker threads so one slow
device never stalls another. With ``--simulate`` the manifest's serial devices
are replaced by simulators on pseudo-terminals, and the very same drivers open
those through pyserial.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

from agent.drivers.escpos import EscPosPrinter
from agent.drivers.vedirect import VEDirectReader
from agent.errors import DriverError
from agent.hub import DoorHub
from agent.link import FleetLink
from agent.settings import AgentSettings
from kits.contract import BatteryTelemetry, DeviceTelemetry, Event, PrinterTelemetry
from kits.manifest import DeviceSpec, KitManifest, load_manifest

log = logging.getLogger("popkit.agent")

AGENT_FW = "agent-0.1.0"
HEALTH_PERIOD_S = 10.0


def serial_path(spec: DeviceSpec) -> str:
    if not spec.bus or not spec.bus.startswith("serial:"):
        raise ValueError(f"device {spec.id}: bus {spec.bus!r} is not serial:<path>")
    return spec.bus.split(":", 1)[1]


class Agent:
    def __init__(self, manifest: KitManifest, link: FleetLink, ports: dict[str, str]):
        self.manifest = manifest
        self.link = link
        self.ports = ports  # device id -> serial path (real or simulated)
        self.started = time.monotonic()
        self._stop = asyncio.Event()

    async def run(self) -> None:
        tasks = [asyncio.create_task(self._health())]
        for spec in self.manifest.devices:
            if spec.role == "powerbank" and spec.id in self.ports:
                tasks.append(asyncio.create_task(self._powerbank(spec)))
            elif spec.role == "printer" and spec.id in self.ports:
                tasks.append(asyncio.create_task(self._printer(spec)))
        await self._stop.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        self._stop.set()

    async def _health(self) -> None:
        while True:
            self.link.emit(
                self.link.device, "telemetry", DeviceTelemetry,
                uptime_s=int(time.monotonic() - self.started), outbox=len(self.link.outbox), dropped=self.link.outbox.dropped,
            )
            await asyncio.sleep(HEALTH_PERIOD_S)

    async def _powerbank(self, spec: DeviceSpec) -> None:
        reader: VEDirectReader | None = None
        latest = None
        next_emit = time.monotonic()
        while True:
            try:
                if reader is None:
                    reader = await asyncio.to_thread(VEDirectReader.open, self.ports[spec.id])
                latest = await asyncio.to_thread(reader.read_reading, max(2.0, spec.telemetry_s))
            except DriverError as exc:
                await self._fault(spec, exc)
                reader = None
                await asyncio.sleep(2.0)
                continue
            if time.monotonic() >= next_emit:
                next_emit = time.monotonic() + spec.telemetry_s
                self.link.emit(
                    spec.id, "telemetry", BatteryTelemetry, source="vedirect",
                    v=latest.v, i=latest.i, p=latest.p, soc=latest.soc, ttg=latest.ttg, alarm=latest.alarm,
                )

    async def _printer(self, spec: DeviceSpec) -> None:
        printer: EscPosPrinter | None = None
        while True:
            try:
                if printer is None:
                    printer = await asyncio.to_thread(EscPosPrinter.open, self.ports[spec.id])
                st = await asyncio.to_thread(printer.status)
                self.link.emit(spec.id, "telemetry", PrinterTelemetry, online=st.online, paper=st.paper,
                               cover_open=st.cover_open, error=st.error)
            except DriverError as exc:
                # A switched-off printer does not answer: that is a reading, not a crash.
                self.link.emit(spec.id, "telemetry", PrinterTelemetry, online=False, paper="unknown")
                await self._fault(spec, exc)
                printer = None
            await asyncio.sleep(spec.telemetry_s)

    async def _fault(self, spec: DeviceSpec, exc: Exception) -> None:
        log.warning("%s: %s", spec.id, exc)
        self.link.emit(spec.id, "event", Event, kind="fault", data={"error": type(exc).__name__, "detail": str(exc)[:160]})


def start_simulators(manifest: KitManifest) -> tuple[dict[str, str], list]:
    """One simulator per serial device of the manifest; returns (device id -> pty path, simulators)."""
    from simulators.printer import PrinterSimulator
    from simulators.vedirect import VEDirectSimulator

    ports, sims = {}, []
    for spec in manifest.devices:
        if spec.role == "powerbank":
            sim = VEDirectSimulator(interval=min(1.0, spec.telemetry_s), soc=0.87, load_a=6.0)
        elif spec.role == "printer":
            sim = PrinterSimulator()
        else:
            continue
        sim.start()
        sims.append(sim)
        ports[spec.id] = sim.path
        log.info("simulating %s (%s) on %s", spec.id, spec.role, sim.path)
    return ports, sims


def real_ports(manifest: KitManifest) -> dict[str, str]:
    return {s.id: serial_path(s) for s in manifest.devices if s.role in ("powerbank", "printer") and s.bus}


def run_agent(manifest_path: str, settings: AgentSettings, simulate: bool = False) -> int:
    manifest = load_manifest(manifest_path)
    ports, sims = start_simulators(manifest) if simulate else (real_ports(manifest), [])
    hosted = {s.id: s.role for s in manifest.devices if s.hosted}
    link = FleetLink(manifest.id, manifest.agent, "agent", settings.mqtt_url,
                     settings.agent_data / f"{manifest.id}-outbox.db", hosted=hosted, fw=AGENT_FW,
                     resend_after_s=settings.resend_after_s, outbox_cap=settings.outbox_cap).start()
    log.info("agent for kit %s: boot %s, %d messages waiting in the outbox", manifest.id, link.boot, len(link.outbox))
    # The kit's scanners ask the hub before they admit (agent/hub.py); a kit without doors needs none.
    hub = None
    if any(s.role == "scanner" for s in manifest.all_devices()):
        settings.agent_data.mkdir(parents=True, exist_ok=True)
        hub = DoorHub(manifest.id, settings.mqtt_url, settings.agent_data / f"{manifest.id}-claims.db").start()
    agent = Agent(manifest, link, ports)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, agent.stop)
        await agent.run()

    try:
        asyncio.run(main())
    finally:
        if hub is not None:
            hub.stop()
        link.stop(flush_s=2.0)
        for sim in sims:
            sim.stop()
    return 0
