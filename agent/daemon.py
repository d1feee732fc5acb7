"""``popkit agent run --kit MANIFEST``: the kit's hub, for as long as the kit is powered.

One asyncio loop drives every hosted part of the manifest (agent/backends.py opens the real
ones or, with ``--simulate``, the simulated parts the command line hands in): a telemetry task
per part at its own cadence (battery, printer status and queue, lights), a print queue per
printer, the door hub for the scanners (agent/hub.py), the kit panel (press: self-test again;
hold: safe shutdown), fleet commands for the agent and its parts (print, set, identify, selftest) answered with acks, and
systemd's watchdog, and the hosted lights' compiled timelines (agent/lightshow.py, from their
retained ``config``, kept on disk so they run with no broker), and the kit's till (agent/till/: the
catalog from the agent's own retained ``config``, the scanners in till mode, receipts on the kit's
printer). Everything owed to the fleet goes through the link's on-disk outbox.
The power-up self-test runs at start and its verdict is published and shown on the panel.
``popkit kit up`` and ``kit down`` run beside it ask it over its local control channel
(agent/control.py, ``<data>/agent.sock``) rather than open the hardware it holds.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import time
from pathlib import Path

from agent import control, kitdown, sdnotify
from agent.backends import Hardware, SimulatedParts, open_hardware
from agent.energy import EnergyMeter
from agent.errors import DriverError
from agent.hub import DoorHub
from agent.tickets import KIND as TICKETS_KIND, KitTickets, UnknownEvent
from agent.updates.offers import UpdateOffers, agent_update_report
from agent.updates.server import open_cache, start_update_server
from agent.kitclock import start_kit_clock
from agent.kitup import power_up
from agent.version import agent_fw
from agent.kitview import LogView
from agent.lightshow import LightShow, light_fields
from agent.link import FleetLink
from agent.settings import AgentSettings
from agent.statewatch import StateWatch
from agent.till.runner import TillRunner, control_request, receipt_printer, till_wanted
from kits.contract import BatteryTelemetry, Command, Config, DeviceTelemetry, Event, LightTelemetry, PrinterTelemetry
from kits.manifest import DeviceSpec, KitManifest, load_manifest
from plumbing.exits import RESTART_EXIT

log = logging.getLogger("popkit.agent")

HEALTH_PERIOD_S = 10.0
ENERGY_SAVE_S = 60.0
UPDATE_SERVER_RETRY_S = 30.0  # the kit's address not up yet, or the port taken: the update server tries again
POWEROFF = ["systemctl", "poweroff"]


class Agent:
    def __init__(self, manifest: KitManifest, link: FleetLink, hw: Hardware, watch: StateWatch, data: Path,
                 simulate: bool = False):
        self.manifest, self.link, self.hw, self.watch, self.data = manifest, link, hw, watch, data
        self.tickets: KitTickets | None = None  # the kit's ticket list (run_agent sets it for a kit with doors)
        self.offers: UpdateOffers | None = None  # field updates (run_agent sets it): the fleet's `update` command
        self.till: TillRunner | None = None  # the kit's till (run_agent sets it when POPKIT_TILL wants one)
        self.simulate = simulate
        self.specs = {s.id: s for s in manifest.devices}
        self.queues: dict = {}
        self.energy = EnergyMeter(data / f"{manifest.id}-energy.json")
        self.panel = None
        self.control: control.ControlServer | None = None
        self.started = time.monotonic()
        self.last_report = None
        self._stop = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._selftest_lock = asyncio.Lock()
        self._running = asyncio.Event()
        self.restart = False  # a reboot command asked for a restart: run_agent exits with RESTART_EXIT
        # The hosted lights follow their compiled timelines (retained `config`), kept on disk: loaded
        # here, before the link is needed, and shown at the start of run() with or without a broker.
        self.lightshow = LightShow(manifest.id, dict(hw.lights), data, link,
                                   safety={d for d in hw.lights if d in self.specs and self.specs[d].expect.safety})
        self.lightshow.load()

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._open_control()  # first: a second agent on this data folder stops here, having opened nothing
        self.link.set_command_handler(self._command_from_network)  # with any that came while we started
        # Each light's first step shows what its kept timeline says is on now, at once, whatever the
        # broker is doing (one task per light: a lamp out of range delays no other).
        show = asyncio.create_task(self.lightshow.run())
        await asyncio.sleep(0)  # the runner has its loop: configs can be handed over
        self.link.set_config_handler(self._config_from_network)
        from agent.drivers.printer import open_printer
        from agent.printing import PrintQueue

        for dev, port in self.hw.printer_ports.items():
            self.queues[dev] = PrintQueue(self.data / f"{self.manifest.id}-{dev}-print.db",
                                          lambda port=port, dev=dev: open_printer(port, device_id=dev)).start()
        if self.till is not None:
            self.till.attach_queues(self.queues)  # receipts that waited for the printer go now
        if self.hw.panel_spec is not None:
            from agent.panel import KitPanel

            self.panel = KitPanel.from_spec(self.hw.panel_spec, self.hw.pin_factory, on_press=self._pressed,
                                            on_hold=self._held, loop=self._loop)
        tasks = [show, asyncio.create_task(self._health()), asyncio.create_task(self._watchdog())]
        for dev, battery in self.hw.batteries.items():
            tasks.append(asyncio.create_task(self._battery(self.specs[dev], battery)))
        for dev in self.queues:
            tasks.append(asyncio.create_task(self._printer(self.specs[dev])))
        for dev, light in self.hw.lights.items():
            tasks.append(asyncio.create_task(self._light(self.specs[dev], light)))
        sdnotify.ready(f"kit {self.manifest.id}")
        self._running.set()  # the control channel's requests wait for this (the print queues, the panel)
        # A stop (systemd's SIGTERM) during the power-up self-test ends it there: a step may wait
        # seconds for a device that is not coming, and the unit's stop must not wait for it.
        first = asyncio.create_task(self.selftest())
        stopping = asyncio.create_task(self._stop.wait())
        await asyncio.wait({first, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not first.done():
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
            log.info("stopped during the power-up self-test")
        await stopping
        sdnotify.stopping()
        if self.control is not None:
            await self.control.close()
        self.link.set_config_handler(None)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for q in self.queues.values():
            await asyncio.to_thread(q.stop)
        if self.panel is not None:
            self.panel.close()
        self.energy.save()

    def stop(self) -> None:
        self._stop.set()

    def _restart(self, cmd: Command) -> tuple[str, str]:
        """``reboot`` for the agent: answer, stop, and exit with RESTART_EXIT for systemd (or the demo)
        to start it again. A reboot asked before this process began had its effect already (the
        broker redelivering it must not restart us again)."""
        if cmd.ts < self.link.started_ms:
            return "ok", f"restarted at {self.link.started_ms}"
        self.restart = True
        assert self._loop is not None
        self._loop.call_later(0.2, self.stop)  # after the ack is on its way (run_agent flushes the outbox)
        return "ok", "restarting"

    async def selftest(self, view=None):
        """The power-up self-test (at start, on a button press, on a fleet command, for kit up;
        ``view`` also sees it, beside the log)."""
        async with self._selftest_lock:  # a second press while one runs waits for it
            shown = LogView(self.manifest.name, log)
            if view is not None:
                shown = control.Views(shown, view)
            self.last_report = await power_up(self.manifest, self.hw, self.link, self.watch,
                                              shown, self.panel, queues=self.queues)
            self.lightshow.refresh()  # the self-test blinked the lights: back to what the timelines say
            return self.last_report

    # ------------------------------------------------------------ the local control channel

    async def _open_control(self) -> None:
        """Listen for kit up / kit down beside us. Another agent on this data folder is refused
        (ControlError: two would share the outbox and the hardware); any other failure leaves
        the kit running without the channel (those commands then work alone)."""
        try:
            self.control = await control.ControlServer(
                control.socket_path(self.data), self.manifest.id,
                {"selftest": self._control_selftest, "kitdown": self._control_kitdown,
                 **({"revoke": self._control_revoke} if self.tickets is not None else {}),
                 **({"till": self._control_till} if self.till is not None else {})}).start()
        except control.ControlError:
            raise
        except OSError as exc:
            log.error("no control channel at %s (%s): kit up and kit down will not reach this agent",
                      control.socket_path(self.data), exc)

    async def _control_selftest(self, _req: dict, reply) -> None:
        await self._running.wait()
        await self.selftest(control.ChannelView(reply))

    async def _control_revoke(self, req: dict, reply) -> None:
        """``popkit tickets revoke --kit``: revoked at the kit's doors and hub at once, sent up to the fleet."""
        assert self.tickets is not None
        try:
            new = await asyncio.to_thread(self.tickets.revoke, str(req.get("event")), list(req.get("tickets") or ()),
                                          str(req.get("by") or "kit"))
        except (UnknownEvent, ValueError) as exc:
            reply({"error": str(exc), "known": self.tickets.known_events()})
            return
        reply({"revoked": new, "known": self.tickets.known_events(), "end": True})

    async def _control_till(self, req: dict, reply) -> None:
        """The till from the Pi's console (agent/till/runner.py control_request)."""
        assert self.till is not None
        await self._running.wait()  # receipts need the print queues
        try:
            result = await asyncio.to_thread(control_request, self.till.till, req)
        except (TypeError, ValueError) as exc:  # TillError is a ValueError: the crew's message
            reply({"error": str(exc)})
            return
        reply({"result": result, "end": True})

    async def _control_kitdown(self, req: dict, reply) -> None:
        """End of event: totals from our stores, the summary into our outbox, and how much of the
        outbox is left once it drains or ``wait_s`` is up."""
        wait_s = min(max(float(req.get("wait_s", 30.0)), 0.0), 600.0)
        await self._running.wait()
        self.energy.save()  # the Wh drawn up to now, not as of the last periodic save
        now, data = await asyncio.to_thread(kitdown.begin, self.manifest, self.data)
        self.link.emit(self.manifest.agent, "event", Event, kind="summary", data=data)
        reply({"summary": data})
        deadline = time.monotonic() + wait_s
        while len(self.link.outbox) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        kitdown.remember(self.manifest, self.data, now)
        reply({"left": len(self.link.outbox), "end": True})

    async def _pressed(self) -> None:
        self._panel_event("press")
        await self.selftest()

    async def _held(self) -> None:
        self._panel_event("hold")
        await self.shutdown()

    def _panel_event(self, button: str) -> None:
        """The crew's hand on the kit, for ops: who re-ran a self-test, or shut a kit down, and when."""
        spec = self.hw.panel_spec
        if spec is not None:
            self.link.emit(spec.id, "event", Event, kind="panel", data={"button": button})

    async def shutdown(self) -> None:
        """Button held: flush what the fleet is owed, then power the Pi off (only on real hardware)."""
        log.warning("panel button held: shutting down")
        if self.panel is not None:  # dark at once, as the LED table says: the hold was taken
            self.panel.show("off")
        await asyncio.to_thread(self._flush, 10.0)
        self.stop()
        if not self.simulate:
            await asyncio.to_thread(subprocess.run, POWEROFF, check=False)

    def _flush(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.link.outbox) and time.monotonic() < deadline:
            time.sleep(0.1)

    # ------------------------------------------------------------ per-part loops

    async def _health(self) -> None:
        while True:
            till = {}
            if self.till is not None:  # the oldest sale the fleet has not receipted: its alert's input
                pending = await asyncio.to_thread(self.till.till.pending)
                till = {"orders_pending": pending["orders"], "orders_oldest_ms": pending["oldest_ms"]}
            self.link.emit(self.link.device, "telemetry", DeviceTelemetry, uptime_s=int(time.monotonic() - self.started),
                           outbox=len(self.link.outbox), dropped=self.link.outbox.dropped, **till)
            await asyncio.sleep(HEALTH_PERIOD_S)

    def _config_from_network(self, device: str, cfg: Config) -> None:
        """The link's retained configs: the agent's own is the till's catalog, the rest the lights' timelines."""
        if device == self.manifest.agent:
            if self.till is not None:
                self.till.intake.on_config(cfg)
            return
        self.lightshow.on_config_threadsafe(device, cfg)

    async def _watchdog(self) -> None:
        period = sdnotify.watchdog_period()
        if period is None:
            return
        while True:  # a stuck loop stops the pings: systemd restarts us
            sdnotify.watchdog()
            await asyncio.sleep(period)

    async def _battery(self, spec: DeviceSpec, battery) -> None:
        failing = False
        saved = time.monotonic()
        while True:
            try:
                fields = await battery.read()
            except DriverError as exc:
                if not failing:  # one fault event per outage, not one per attempt
                    await self._fault(spec, exc)
                failing = True
                await asyncio.sleep(min(10.0, spec.telemetry_s))
                continue
            if failing:
                log.info("%s: battery monitor back", spec.id)
            failing = False
            self.energy.add(spec.id, fields["v"], fields["i"], fields.get("p"))
            if time.monotonic() - saved > ENERGY_SAVE_S:
                self.energy.save()
                saved = time.monotonic()
            self.link.emit(spec.id, "telemetry", BatteryTelemetry, **{k: v for k, v in fields.items() if v is not None})
            await asyncio.sleep(spec.telemetry_s)

    async def _printer(self, spec: DeviceSpec) -> None:
        q = self.queues[spec.id]
        while True:
            try:
                st = await asyncio.to_thread(q.printer_status)
                self.link.emit(spec.id, "telemetry", PrinterTelemetry, online=st.online, paper=st.paper,
                               cover_open=st.cover_open, error=st.error)
            except DriverError as exc:
                # A switched-off printer does not answer: that is a reading, not a crash.
                self.link.emit(spec.id, "telemetry", PrinterTelemetry, online=False, paper="unknown")
                log.debug("%s: %s", spec.id, exc)
            await asyncio.sleep(spec.telemetry_s)

    async def _light(self, spec: DeviceSpec, light) -> None:
        while True:
            self.link.emit(spec.id, "telemetry", LightTelemetry, **light_fields(light),
                           scene=self.lightshow.showing(spec.id))
            await asyncio.sleep(spec.telemetry_s)

    async def _fault(self, spec: DeviceSpec, exc: Exception) -> None:
        log.warning("%s: %s", spec.id, exc)
        self.link.emit(spec.id, "event", Event, kind="fault", data={"error": type(exc).__name__, "detail": str(exc)[:160]})

    # ------------------------------------------------------------ fleet commands

    def _command_from_network(self, device: str, cmd: Command) -> None:
        """From the link's network thread: run on the loop, answer with an ack when done."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._command(device, cmd)))

    async def _command(self, device: str, cmd: Command) -> None:
        try:
            answer = await self._execute(device, cmd)
        except (DriverError, ValueError) as exc:
            answer = "error", str(exc)
        if answer is not None:  # None: acked later (an update offer waiting for the kit to be quiet)
            self.link.ack(device, cmd.id, *answer)

    async def _execute(self, device: str, cmd: Command) -> tuple[str, str | None] | None:
        a = cmd.action
        if device == self.manifest.agent:
            if a in ("selftest", "identify"):
                report = await self.selftest()
                return "ok", report.status
            if a == "reboot":
                return self._restart(cmd)
            if a == "update":
                if self.offers is None:
                    return "rejected", "this agent takes no updates"
                return await self.offers.handle(cmd)
            if a == "labels":  # labels from the dashboard, on one of the kit's printers (agent/labels_cmd.py)
                from agent.labels_cmd import run_labels

                till = self.till.till if self.till is not None else None  # its catalog: the till's prices
                return await asyncio.to_thread(run_labels, cmd.args, self.queues, till)
            return "rejected", f"the agent does not know {a!r} (selftest, identify, reboot, update, labels)"
        spec = self.specs.get(device)
        if spec is not None and spec.role == "printer" and device in self.queues:
            from agent.drivers.printer import InvalidPrintJob
            from agent.drivers.receipt import Receipt, self_test_label

            if a == "print":  # args: {"receipt": Receipt.to_dict()}
                try:
                    job = Receipt.from_dict(cmd.args.get("receipt"))
                    job.encode()  # content that can never print is refused now, not failed later
                except InvalidPrintJob as exc:
                    return "rejected", f"print: {exc}"
                return "ok", f"job {self.queues[device].enqueue(job)} queued"
            if a == "identify":
                return "ok", f"job {self.queues[device].enqueue(self_test_label(device))} queued"
        if spec is not None and spec.role == "light" and device in self.hw.lights:
            light = self.hw.lights[device]
            if a == "identify":
                self.lightshow.hold(device)  # as the firmware: a command holds until the timeline next changes
                await _call(light.flash)
                return "ok", None
            if a == "set":
                self.lightshow.hold(device)
                await _set_light(light, cmd.args)
                self.link.emit(device, "telemetry", LightTelemetry, **light_fields(light),
                               scene=self.lightshow.showing(device))
                return "ok", None
        return "rejected", f"{device} does not take {a!r}"


async def _call(fn, *args):
    """A driver method, async (BLE) or blocking (GPIO), from the loop."""
    if asyncio.iscoroutinefunction(fn):
        return await fn(*args)
    return await asyncio.to_thread(fn, *args)


async def _set_light(light, args: dict) -> None:
    if "on" in args and not args["on"]:
        await _call(light.off)
        return
    if hasattr(light, "rgb"):  # a BLE lamp
        if "rgb" in args:
            r, g, b = (int(x) for x in args["rgb"])
            await light.rgb(r, g, b)
        if "level" in args:
            await light.level(int(args["level"]))
    await _call(light.on)


def run_agent(manifest_path: str, settings: AgentSettings, parts: SimulatedParts | None = None) -> int:
    """The agent until it is stopped; ``parts``: a simulated kit's (simulators/kit.py) instead of hardware."""
    manifest = load_manifest(manifest_path)
    data = settings.agent_data
    data.mkdir(parents=True, exist_ok=True)
    control.ensure_free(control.socket_path(data))  # before our link speaks for the agent
    hosted = {s.id: s.role for s in manifest.devices if s.hosted}
    selling = till_wanted(manifest, settings)
    if selling:
        receipt_printer(manifest, settings)  # a wrong POPKIT_TILL_PRINTER stops us before anything is opened
    link = FleetLink(manifest.id, manifest.agent, "agent", settings.mqtt_url, data / f"{manifest.id}-outbox.db",
                     hosted=hosted, fw=agent_fw(), resend_after_s=settings.resend_after_s,
                     outbox_cap=settings.outbox_cap, hold_commands=True, own_config=selling)
    link.update = agent_update_report(data)  # the last self-update's rollback or failure, in the agent's state
    link.start()
    log.info("agent for kit %s: boot %s, %d messages waiting in the outbox", manifest.id, link.boot, len(link.outbox))
    # The kit's scanners ask the hub before they admit (agent/hub.py); a kit without doors needs none.
    hub = tickets = None
    if any(s.role == "scanner" for s in manifest.devices):
        # The kit's own ticket list (agent/tickets.py): revocations made at the kit go to the doors, the
        # hub and, through the outbox, the fleet; the hub refuses a revoked ticket's claims.
        tickets = KitTickets(manifest.id, settings.mqtt_url, data / f"{manifest.id}-tickets.db",
                             emit=lambda d, ts: link.emit(manifest.agent, "event", Event, ts=ts, kind=TICKETS_KIND,
                                                          data=d)).start()
        hub = DoorHub(manifest.id, settings.mqtt_url, data / f"{manifest.id}-claims.db",
                      revoked=tickets.is_revoked).start()
        flashed = {e for e in settings.kit_events.split(",") if e}  # keys flashed onto the doors, as provisioned
        tickets.scanned_events = lambda: hub.book.events() | flashed  # and an event scanned at the doors is the kit's
    watch = StateWatch(manifest.id, settings.mqtt_url).start()
    clock = start_kit_clock(manifest.id, settings, data, link, watch)  # the kit's time, served to its ESP32s
    till = TillRunner(manifest, settings, data, link, clock).start() if selling else None

    restart = False

    async def main() -> None:
        nonlocal restart
        hw = open_hardware(manifest, parts)
        agent = Agent(manifest, link, hw, watch, data, simulate=parts is not None)
        agent.tickets = tickets
        agent.till = till
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, agent.stop)
        cache = open_cache(settings, data)
        servers = []  # the update server once it listens (None unless POPKIT_UPDATE_LISTEN names an address)
        offers = agent.offers = UpdateOffers(manifest, settings.mqtt_url, data, cache, link.ack,
                                             serve=bool(settings.update_listen),
                                             quiet_s=settings.update_quiet_s).start()

        async def serve_updates() -> None:
            # The kit's interface may come up after the agent (a hotspot): try again until it listens.
            while settings.update_listen:
                server = await start_update_server(settings, data, cache)
                if server is not None:
                    servers.append(server)
                    await asyncio.to_thread(offers.serving, server.host, server.port)
                    return
                await asyncio.sleep(UPDATE_SERVER_RETRY_S)

        background = [asyncio.create_task(serve_updates()), asyncio.create_task(offers.run())]
        if till is not None:  # the till page for the crew's phones on the kit network (docs/till.md)
            from agent.till.web import serve_till
            background.append(asyncio.create_task(serve_till(till.till, settings)))
        try:
            await agent.run()
        finally:
            restart = agent.restart
            for t in background:
                t.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            offers.stop()
            for server in servers:
                await server.close()
            await hw.close()

    try:
        asyncio.run(main())
    finally:
        if till is not None:
            till.stop()
        clock.stop()
        watch.stop()
        if hub is not None:
            hub.stop()
        if tickets is not None:
            tickets.stop()
        link.stop(flush_s=2.0)
    if restart:
        log.info("restarting, as the fleet asked: exit %d", RESTART_EXIT)
        return RESTART_EXIT
    return 0
