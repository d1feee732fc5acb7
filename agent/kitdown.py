"""``popkit kit down MANIFEST``: close the event: what the kit did, told to the crew and the fleet.

Totals come from the agent's own stores in its data folder, the ones it keeps whether or not
the uplink is there: the door hub's claims (tickets admitted, per door), each printer's queue
(labels printed, failed, still waiting) and the energy meter (Wh drawn per pack). The summary
covers what happened since the previous ``kit down`` (its totals are kept as the next
baseline), goes into the outbox as a ``summary`` event, and the command then waits for the
outbox to drain: it says plainly if some messages are still waiting for the uplink.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from agent.kitup import AGENT_FW
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


def kit_down(manifest: KitManifest, mqtt_url: str, data: Path, wait_s: float = 30.0, out=print) -> int:
    data.mkdir(parents=True, exist_ok=True)
    base_file = data / f"{manifest.id}-last-down.json"
    base = json.loads(base_file.read_text()) if base_file.exists() else {}
    now = totals(manifest, data)
    data_ = summary(now, base, int(base.get("at_ms", 0)))
    hosted = {s.id: s.role for s in manifest.devices if s.hosted}
    link = FleetLink(manifest.id, manifest.agent, "agent", mqtt_url, data / f"{manifest.id}-outbox.db",
                     hosted=hosted, fw=AGENT_FW).start()
    left = -1
    try:
        link.emit(manifest.agent, "event", Event, kind="summary", data=data_)
        out(f"{manifest.name}: end of event")
        out(f"  check-ins   {data_['checkins']}" + "".join(f"  ({d} {n})" for d, n in data_["checkins_by_door"].items()))
        out(f"  printed     {data_['labels_printed']} label(s)" + (f", {data_['print_failed']} failed" if data_["print_failed"] else "")
            + (f", {data_['print_queued']} still queued" if data_["print_queued"] else ""))
        for pack, wh in data_["energy_wh"].items():
            out(f"  energy      {pack}: {wh:.0f} Wh drawn")
        deadline = time.monotonic() + wait_s
        while len(link.outbox) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = len(link.outbox)
        if left:
            out(f"  outbox      {left} message(s) still waiting for the uplink: they are kept on disk and go "
                "out when the agent next connects")
        else:
            out("  outbox      empty: the fleet has everything")
    finally:
        link.stop()
    base_file.write_text(json.dumps({**now, "at_ms": int(time.time() * 1000)}))
    return 0 if not left else 1
