"""``popkit kit up MANIFEST``: power a kit up at the venue, and say whether it is ready.

The link and outbox first, then every part at once (agent/checks.py), live in the terminal;
then the verdict with each problem's fix, published to the fleet as a ``readiness`` event and
shown on the kit panel's LED. Exit code 0 only when ready (1 degraded, 2 not ready, 3 when it
could not run at all).

Beside the running agent service (its control channel answers, agent/control.py), the command
asks the daemon for its self-test and draws the steps as they come: the daemon holds the kit's
ports, radios and pins, and it alone speaks for the agent on the broker, so this process opens
no hardware and publishes nothing. With no agent running it does the work itself.

With ``--simulate`` the whole kit is simulated on this machine, for training and tests: the
command line (popkit/simkit.py) starts the scanners and lighting controllers as their real
firmware in the unix port and, unless ``--mqtt`` names one, a broker of its own, and hands in
the hosted parts' simulators (simulators/kit.py, in the condition ``--scenario`` sets), which
agent/backends.py opens in place of hardware.
"""

from __future__ import annotations

import asyncio
import logging
import os
from contextlib import ExitStack
from pathlib import Path

from agent import control
from agent.backends import Hardware, SimulatedParts, open_hardware
from agent.checks import device_steps, link_step
from agent.kitview import KitView
from agent.link import FleetLink
from agent.powerup import Report, run_steps
from agent.readiness import blink_code
from agent.statewatch import StateWatch
from agent.version import agent_fw
from kits.contract import Event
from kits.manifest import KitManifest

log = logging.getLogger("popkit.agent.kitup")

EXIT = {"ready": 0, "degraded": 1, "not_ready": 2}


async def power_up(manifest: KitManifest, hw: Hardware, link: FleetLink, watch: StateWatch, view,
                   panel=None, queues: dict | None = None) -> Report:
    """Run the self-test, publish its verdict, show it on the panel (``view``: KitView or LogView)."""
    if panel is not None:
        panel.show("booting")
    with view:
        report = await run_steps([link_step(link, manifest.agent)], device_steps(manifest, hw, watch, queues),
                                 view.progress)
    view.verdict(report)
    # Into the outbox: the fleet gets the verdict even if the uplink came back only later.
    link.emit(manifest.agent, "event", Event, kind="readiness", data=report.event_data())
    if panel is not None:
        panel.show(report.status, panel_code(manifest, report))
    return report


def panel_code(manifest: KitManifest, report: Report) -> int | None:
    """The blinks the panel shows for this verdict (agent/readiness.py CHECK_CODES)."""
    roles = {d.id: d.role for d in manifest.devices}
    roles[manifest.agent] = "agent"
    return blink_code(report.problems, roles)


def _say_panel(manifest: KitManifest, report: Report, view) -> None:
    """What the running agent's panel LED shows now, in words, so the crew learns to read it."""
    if any(d.role == "panel" for d in manifest.devices):
        from agent.panel import describe

        view.console.print(f"  panel LED: {describe(report.status, panel_code(manifest, report))}", markup=False)


def ask_agent(manifest: KitManifest, sock: Path, view) -> Report:
    """The running agent's self-test through its control channel, drawn in ``view`` as it runs.
    Raises control.NoAgent (before drawing anything) when no agent listens at ``sock``."""
    answers = control.request(sock, manifest.id, "selftest")
    view.console.print(f"the agent service is running: its self-test, through {sock}", markup=False)
    report = None
    with view:
        for msg in answers:
            if "step" in msg:
                view.progress(*control.step_from(msg))
            elif "verdict" in msg:
                report = control.report_from(msg)
    if report is None:
        raise control.ControlError(f"{sock}: the agent ended its answer without a verdict")
    view.verdict(report)
    _say_panel(manifest, report, view)
    return report


def hand_back(data: Path) -> None:
    """Run as root with the service stopped, this command writes into the service's data folder
    (its outbox, kit down's baseline): give what root made there to the folder's owner, or the
    service (User=popkit) could not open its own outbox at its next start."""
    try:
        owner = data.stat()
    except OSError:
        return
    if os.geteuid() != 0 or owner.st_uid == 0:
        return
    for entry in data.iterdir():
        try:
            if entry.lstat().st_uid == 0:
                os.chown(entry, owner.st_uid, owner.st_gid, follow_symlinks=False)
        except OSError as exc:  # the command's result stands; say what the crew must fix
            log.warning("%s: cannot give it back to the data folder's owner: %s", entry, exc)


def kit_up(manifest: KitManifest, mqtt_url: str | None, data_dir: Path, parts: SimulatedParts | None = None) -> int:
    """Power the kit up: ask the running agent, else run the self-test here. ``parts``: a simulated
    kit's hosted parts (simulators/kit.py) in place of hardware, its broker and firmware already up."""
    if parts is None:  # a simulated kit is its own, never the service's
        try:
            return EXIT[ask_agent(manifest, control.socket_path(data_dir), KitView(manifest.name)).status]
        except control.NoAgent:
            pass
    data_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        stack.callback(hand_back, data_dir)  # runs last: after the link has closed its outbox
        if mqtt_url is None:
            raise ValueError("no broker: pass --mqtt (or POPKIT_MQTT_URL)")
        hosted = {s.id: s.role for s in manifest.devices if s.hosted}
        link = FleetLink(manifest.id, manifest.agent, "agent", mqtt_url, data_dir / f"{manifest.id}-outbox.db",
                         hosted=hosted, fw=agent_fw()).start()
        stack.callback(link.stop, 3.0)  # the verdict reaches the broker before we go
        watch = StateWatch(manifest.id, mqtt_url).start()
        stack.callback(watch.stop)
        view = KitView(manifest.name)

        async def main() -> Report:
            hw = open_hardware(manifest, parts)
            panel = None
            try:
                if hw.panel_spec is not None:
                    from agent.panel import KitPanel

                    panel = KitPanel.from_spec(hw.panel_spec, hw.pin_factory, on_press=lambda: None,
                                               on_hold=lambda: None)
                return await power_up(manifest, hw, link, watch, view, panel)
            finally:
                if panel is not None:  # before its pins go: the LED's blink thread must not outlive them
                    panel.close()  # (so with no agent service the LED goes dark when this command ends)
                await hw.close()

        report = asyncio.run(main())
        return EXIT[report.status]
