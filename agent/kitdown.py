"""``popkit kit down MANIFEST``: close the event: what the kit did, told to the crew and the fleet.

Totals come from the agent's own stores in its data folder, the ones it keeps whether or not
the uplink is there: the door hub's claims (tickets admitted, per door), each printer's queue
(labels printed, failed, still waiting) and the energy meter (Wh drawn per pack). The summary
covers what happened since the previous ``kit down`` (its totals are kept as the next
baseline), goes into the outbox as a ``summary`` event, and the command then waits for the
outbox to drain: it says plainly if some messages are still waiting for the uplink.

Beside the running agent service the daemon does it (``kitdown`` on its control channel,
agent/control.py): it owns those stores and the outbox, and it alone speaks for the agent on
the broker. This process only prints what it is told. With no agent running it does the work
itself, with a link of its own.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from agent import control
from agent.kitup import hand_back
from agent.version import agent_fw
from agent.link import FleetLink
from kits.contract import Event
from kits.manifest import KitManifest


def _rows(db: Path, sql: str) -> list[tuple]:
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:  # the table was never created: nothing happened
        return []
    finally:
        conn.close()


def totals(manifest: KitManifest, data: Path) -> dict:
    """Everything-ever totals from the agent's stores."""
    doors = dict(_rows(data / f"{manifest.id}-claims.db", "SELECT device, count(*) FROM claims GROUP BY device"))
    printed = failed = queued = 0
    for spec in manifest.devices:
        if spec.role == "printer":
            states = dict(_rows(data / f"{manifest.id}-{spec.id}-print.db",
                                "SELECT state, count(*) FROM print_jobs GROUP BY state"))
            printed += states.get("done", 0)
            failed += states.get("failed", 0)
            queued += states.get("queued", 0) + states.get("printing", 0)
    energy_file = data / f"{manifest.id}-energy.json"
    energy = json.loads(energy_file.read_text()).get("wh", {}) if energy_file.exists() else {}
    return {"doors": doors, "printed": printed, "failed": failed, "queued": queued, "energy": energy}


def summary(now: dict, base: dict, since_ms: int) -> dict:
    """``data`` of the summary event: now minus the last kit down's totals."""
    doors = {d: n - base.get("doors", {}).get(d, 0) for d, n in now["doors"].items()}
    doors = {d: n for d, n in doors.items() if n}
    energy = {d: round(wh - base.get("energy", {}).get(d, 0.0), 1) for d, wh in now["energy"].items()}
    return {"since": since_ms, "checkins": sum(doors.values()), "checkins_by_door": doors,
            "labels_printed": now["printed"] - base.get("printed", 0), "print_failed": now["failed"] - base.get("failed", 0),
            "print_queued": now["queued"], "energy_wh": energy}


def begin(manifest: KitManifest, data: Path) -> tuple[dict, dict]:
    """(totals now, the summary event's data since the last kit down)."""
    base_file = data / f"{manifest.id}-last-down.json"
    base = json.loads(base_file.read_text()) if base_file.exists() else {}
    now = totals(manifest, data)
    return now, summary(now, base, int(base.get("at_ms", 0)))


def remember(manifest: KitManifest, data: Path, now: dict) -> None:
    """These totals are the next kit down's baseline."""
    (data / f"{manifest.id}-last-down.json").write_text(json.dumps({**now, "at_ms": int(time.time() * 1000)}))


def summary_lines(name: str, data_: dict) -> list[str]:
    lines = [f"{name}: end of event",
             f"  check-ins   {data_['checkins']}" + "".join(f"  ({d} {n})" for d, n in data_["checkins_by_door"].items()),
             f"  printed     {data_['labels_printed']} label(s)" + (f", {data_['print_failed']} failed" if data_["print_failed"] else "")
             + (f", {data_['print_queued']} still queued" if data_["print_queued"] else "")]
    lines += [f"  energy      {pack}: {wh:.0f} Wh drawn" for pack, wh in data_["energy_wh"].items()]
    return lines


def outbox_line(left: int) -> str:
    if left:
        return (f"  outbox      {left} message(s) still waiting for the uplink: they are kept on disk and go "
                "out when the agent next connects")
    return "  outbox      empty: the fleet has everything"


def ask_agent(manifest: KitManifest, sock: Path, wait_s: float, out=print) -> int:
    """Kit down done by the running agent; raises control.NoAgent when none listens at ``sock``."""
    left = -1
    for msg in control.request(sock, manifest.id, "kitdown", timeout=wait_s + 30, wait_s=wait_s):
        if "summary" in msg:
            for line in summary_lines(manifest.name, msg["summary"]):
                out(line)
        if "left" in msg:
            left = int(msg["left"])
            out(outbox_line(left))
    return 0 if left == 0 else 1


def kit_down(manifest: KitManifest, mqtt_url: str, data: Path, wait_s: float = 30.0, out=print) -> int:
    try:
        return ask_agent(manifest, control.socket_path(data), wait_s, out)
    except control.NoAgent:
        pass
    data.mkdir(parents=True, exist_ok=True)
    now, data_ = begin(manifest, data)
    hosted = {s.id: s.role for s in manifest.devices if s.hosted}
    link = FleetLink(manifest.id, manifest.agent, "agent", mqtt_url, data / f"{manifest.id}-outbox.db",
                     hosted=hosted, fw=agent_fw()).start()
    left = -1
    try:
        link.emit(manifest.agent, "event", Event, kind="summary", data=data_)
        for line in summary_lines(manifest.name, data_):
            out(line)
        deadline = time.monotonic() + wait_s
        while len(link.outbox) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = len(link.outbox)
        out(outbox_line(left))
    finally:
        link.stop()
    remember(manifest, data, now)
    hand_back(data)
    return 0 if not left else 1
