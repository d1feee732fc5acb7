"""The power-up steps of one kit, made from its manifest: one per part, each in the crew's words.

A fix text tells the crew only what the kit really does and shows: the firmware lights a
scanner's lamp only for a scan's verdict (green or red, with its beeps), never for Wi-Fi, and a
lighting controller has no lamp of its own; the agent's link is to the kit's broker, which runs
on this Pi in the kit topology (or is the fleet's in the simple one).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from agent.backends import Hardware
from agent.powerup import Step, StepResult, _hm, battery_problems, runtime_hours, utc_now
from agent.readiness import fault, warning
from kits.manifest import DeviceSpec, KitManifest

LINK_WAIT_S = 3.0
DEVICE_WAIT_S = 6.0  # for a scanner or lighting controller's birth on the kit's broker
_WIFI_ROLES = {"scanner": "scanner", "lighting": "lighting controller"}


def link_step(link: Any, device: str) -> Step:
    async def run() -> StepResult:
        up = await asyncio.to_thread(link.connected.wait, LINK_WAIT_S)
        waiting = len(link.outbox)
        if up:
            return StepResult(f"connected to {link.mqtt_url}, {waiting} message(s) waiting to send")
        return StepResult(f"no broker at {link.mqtt_url}; {waiting} message(s) kept", [warning(
            device, "no link to the broker: the kit works offline and sends everything later",
            link_fix(link.mqtt_url))])
    return Step(device, "link", _with_clock(run, link, device))


def link_fix(mqtt_url: str) -> str:
    """On the Pi, the broker is the kit's own Mosquitto: the venue's network is not the cause."""
    from urllib.parse import urlsplit

    host = urlsplit(mqtt_url if "://" in mqtt_url else f"mqtt://{mqtt_url}").hostname or ""
    if host in ("127.0.0.1", "localhost", "::1"):
        return "the kit's broker on this Pi is not answering: sudo systemctl restart mosquitto (journalctl -u mosquitto says why)"
    return f"check the network from this Pi to the broker at {host} and that the broker runs"


def _unopened_fix(spec: DeviceSpec) -> str:
    kind = spec.bus_kind
    if kind == "serial":
        return f"check its cable is plugged in at {spec.address} and it is switched on"
    if kind == "ble":
        return "switch it on and bring it within Bluetooth range of the Pi"
    if kind == "gpio":
        return "check the GPIO wiring and the pins in the kit manifest (the agent needs the gpio group)"
    return "check its power and cable"


def _unopened(spec: DeviceSpec, why: str, label: str) -> Step:
    async def run() -> StepResult:
        return StepResult("cannot be opened", [fault(spec.id, f"{label} cannot be opened ({why})"[:120],
                                                     _unopened_fix(spec))])
    return Step(spec.id, label, run)


def printer_step(spec: DeviceSpec, port: str, queue: Any = None) -> Step:
    """The printer's status and a test label: on its own connection, or through the running
    print queue's (the daemon's: one port must have one reader, or replies cross)."""
    async def run() -> StepResult:
        if queue is not None:
            return await asyncio.to_thread(_queued_printer_self_test, spec.id, queue)
        return await asyncio.to_thread(_printer_self_test, spec.id, port)
    return Step(spec.id, "printer", run, fix_if_stuck="check the printer's power and USB cable")


def _queued_printer_self_test(device: str, queue: Any) -> StepResult:
    from agent.drivers.printer import link_problem, status_problems
    from agent.drivers.receipt import self_test_label
    from agent.errors import DriverError

    try:
        status = queue.printer_status()
    except DriverError as exc:
        return StepResult("not answering", [link_problem(device, exc)])
    problems = status_problems(device, status)
    if not status.can_print:
        return StepResult(problems[0].what if problems else "cannot print", problems)
    queue.enqueue(self_test_label(device))
    return StepResult("status ok, test label queued" + ("; paper low" if problems else ""), problems)


def _printer_self_test(device: str, port: str) -> StepResult:
    from agent.drivers.printer import link_problem, open_printer
    from agent.errors import DriverError

    try:
        printer = open_printer(port, device_id=device)
    except DriverError as exc:
        return StepResult("not found", [link_problem(device, exc)])
    try:
        problems = printer.self_test(device)
    finally:
        printer.close()
    if problems and any(p.severity == "fault" for p in problems):
        return StepResult(problems[0].what, problems)
    return StepResult("status ok, test label printed" + ("; paper low" if problems else ""), problems)


def battery_step(spec: DeviceSpec, battery: Any, manifest: KitManifest) -> Step:
    async def run() -> StepResult:
        fields, problems = await battery.self_test(spec.expect)
        if fields is None:
            return StepResult("no reading", problems)
        hours = runtime_hours(fields.get("v"), fields.get("i"), fields.get("soc"), fields.get("ttg"),
                              fields.get("remaining_ah"))
        ev = manifest.event
        problems += battery_problems(spec.id, fields.get("soc"), hours, now=utc_now(),
                                     ends=ev.ends if ev else None, doors_open=ev.doors_open if ev else None,
                                     min_soc=None, min_runtime_h=spec.expect.min_runtime_h)
        soc = f", {fields['soc']:.0f} %" if fields.get("soc") is not None else ""
        left = f", about {_hm(hours)} left at {-fields['i']:.1f} A" if hours is not None else ", not discharging"
        return StepResult(f"{fields['v']:.2f} V{soc}{left}", problems)
    return Step(spec.id, "battery", run, fix_if_stuck="check the battery monitor's cable or Bluetooth range")


def light_step(spec: DeviceSpec, light: Any) -> Step:
    async def run() -> StepResult:
        if asyncio.iscoroutinefunction(light.self_test):  # a BLE lamp
            problems = await light.self_test(spec.id, spec.expect)
        else:  # a relay: its flash blocks for a second
            problems = await asyncio.to_thread(light.self_test, spec.id)
        return StepResult("flashed" if not problems else problems[0].what, problems)
    return Step(spec.id, "light", run, fix_if_stuck="check the light is powered")


def firmware_step(spec: DeviceSpec, watch: Any, wait_s: float = DEVICE_WAIT_S) -> Step:
    label = _WIFI_ROLES[spec.role]

    async def run() -> StepResult:
        state = await asyncio.to_thread(watch.wait_online, spec.id, wait_s)
        if state is None:
            return StepResult("not online", [fault(spec.id, f"{label} {spec.id} is not online", _offline_fix(spec))])
        return StepResult(f"online, firmware {state.fw or 'unknown'}")
    return Step(spec.id, label, run)


def _offline_fix(spec: DeviceSpec) -> str:
    # The firmware shows nothing while it joins the Wi-Fi: the crew checks power, range and flash.
    powered = " (with power, a scanned code lights its lamp green or red)" if spec.role == "scanner" else ""
    return f"switch it on{powered}, bring it in range of the kit's Wi-Fi, check it was flashed (popkit device flash)"


def device_steps(manifest: KitManifest, hw: Hardware, watch: Any, queues: dict | None = None) -> list[Step]:
    steps: list[Step] = []
    for spec in manifest.devices:
        if spec.id in hw.problems:
            steps.append(_unopened(spec, hw.problems[spec.id], spec.role))
        elif spec.role == "printer":
            steps.append(printer_step(spec, hw.printer_ports[spec.id], (queues or {}).get(spec.id)))
        elif spec.role == "powerbank":
            steps.append(battery_step(spec, hw.batteries[spec.id], manifest))
        elif spec.role == "light" and spec.id in hw.lights:
            steps.append(light_step(spec, hw.lights[spec.id]))
        elif spec.role in _WIFI_ROLES:
            steps.append(firmware_step(spec, watch))
    return steps


def _with_clock(run, link: Any, device: str):
    """The link's step also says when the Pi's clock is behind the last time it knew (the agent's
    clock, agent/kitclock.py: no RTC and no internet time), the one clock fault the crew can fix."""
    from agent.kitclock import clock_problem

    async def checked() -> StepResult:
        result = await run()
        problem = clock_problem(device, getattr(link, "clock", None))
        if problem is not None:
            result.problems.append(replace(problem, check="clock"))  # its own blink count on the panel
            result.detail += "; the Pi's clock is behind its last known time"
        return result
    return checked
