"""Field updates from the command line, through the fleet's API (docs/updates.md, docs/cli.md):

    popkit release upload DIR                       a bundle `popkit release build` wrote (ops)
    popkit rollout start RELEASE [--kit K] [--device D] [--groups 1,10%,100%] ...   (ops)
    popkit rollout pause|resume|abort ID            (ops)
    popkit rollout show [ID]                        one rollout's groups and devices, or every rollout
    popkit kit hold KIT [--reason R] / unhold KIT   (the kit's crew, or ops)

The token comes from POPKIT_TOKEN only (never a command line: ps, shell history); the fleet from
--fleet or POPKIT_FLEET_URL. A refusal prints the fleet's reason and exits 1.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import urllib.parse
from pathlib import Path

from popkit import fleetapi
from popkit.fleetapi import FleetRefused

DEFAULT_FLEET = "http://127.0.0.1:8000"


# Which token each command needs, for the hint when POPKIT_TOKEN is unset.
NEEDS = "ops for releases and rollouts, the kit's crew or ops for a hold"


def call(fleet: str, method: str, path: str, body: dict | None = None, timeout: float = 30.0) -> dict | list:
    return fleetapi.call(fleet, method, path, body, timeout, needs=NEEDS)


def bundle_body(folder: Path) -> dict:
    """POST /api/v1/releases's body from a bundle folder: manifest.json's exact text, manifest.sig as
    hex, every file under files/ as base64 (the fleet checks them all against the signature)."""
    manifest, sig, files = folder / "manifest.json", folder / "manifest.sig", folder / "files"
    for need in (manifest, sig, files):
        if not need.exists():
            raise FleetRefused(f"{folder} is not a bundle: no {need.name} (popkit release build writes one)")
    out = {}
    for p in sorted(files.rglob("*")):
        if p.is_symlink():
            raise FleetRefused(f"{p} is a symbolic link: a bundle holds plain files only")
        if p.is_file():
            out[p.relative_to(files).as_posix()] = base64.b64encode(p.read_bytes()).decode()
    return {"manifest": manifest.read_text(encoding="utf-8"), "sig": sig.read_bytes().hex(), "files": out}


def _groups(text: str) -> list:
    return [int(g) if g.strip().isdigit() else g.strip() for g in text.split(",") if g.strip()]


def print_rollout(r: dict) -> None:
    print(f"rollout {r['id']}: {r['release']} {r['state']}" + (f" ({r['pause_reason']})" if r.get("pause_reason") else ""))
    for g in r.get("progress", []):
        print(f"  group {g['group']} ({g['spec']}): {g['committed']}/{g['size']} committed, {g['failed']} failed, "
              f"{g['in_flight']} in flight, {g['not_started']} not started" + (" - complete" if g["complete"] else ""))
    for d in r.get("device_updates", []):
        print(f"  {d['device_id']:<24} {d['kit_id']:<16} g{d['group']} {d['state']:<11} {d['reason'] or ''}".rstrip())


def run(args: argparse.Namespace) -> int:
    fleet = args.fleet or os.environ.get("POPKIT_FLEET_URL") or DEFAULT_FLEET
    try:
        return _run(args, fleet)
    except FleetRefused as exc:
        print(f"popkit {args.what}: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, fleet: str) -> int:
    what = args.what
    if what == "release upload":
        rel = call(fleet, "POST", "/api/v1/releases", bundle_body(Path(args.bundle)), args.timeout)
        print(f"release {rel['id']} uploaded: {len(rel['files'])} files, {rel['size']} bytes, key {rel['key_id']}")
    elif what == "rollout start":
        body = {"release": args.release, "kits": args.kit, "devices": args.device, "downgrade": args.downgrade}
        for name in ("success_threshold", "error_threshold", "rate_per_min"):
            if getattr(args, name) is not None:
                body[name] = getattr(args, name)
        if args.groups:
            body["groups"] = _groups(args.groups)
        print_rollout(call(fleet, "POST", "/api/v1/rollouts", body, args.timeout))
    elif what in ("rollout pause", "rollout resume", "rollout abort"):
        body = {"reason": args.reason} if getattr(args, "reason", None) else None
        print_rollout(call(fleet, "POST", f"/api/v1/rollouts/{args.id}/{what.split()[1]}", body, args.timeout))
    elif what == "rollout show":
        if args.id is not None:
            print_rollout(call(fleet, "GET", f"/api/v1/rollouts/{args.id}", timeout=args.timeout))
        else:
            for r in call(fleet, "GET", "/api/v1/rollouts", timeout=args.timeout):
                print(f"rollout {r['id']}: {r['release']} {r['state']}, groups {','.join(r['groups'])}, "
                      f"by {r['created_by']}" + (f" ({r['pause_reason']})" if r.get("pause_reason") else ""))
    elif what == "kit hold":
        kit = urllib.parse.quote(args.kit, safe="")
        h = call(fleet, "POST", f"/api/v1/kits/{kit}/updates/hold", {"reason": args.reason}, args.timeout)
        print(f"kit {h['kit_id']} held by {h['by']}" + (f": {h['reason']}" if h.get("reason") else "")
              + ": no device of it is offered an update until `popkit kit unhold`")
    elif what == "kit unhold":
        kit = urllib.parse.quote(args.kit, safe="")
        r = call(fleet, "DELETE", f"/api/v1/kits/{kit}/updates/hold", timeout=args.timeout)
        print(f"kit {r['kit_id']}: hold lifted" if r["lifted"] else f"kit {r['kit_id']} was not held")
    return 0


def _common(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--fleet", help=f"the fleet API's base URL (POPKIT_FLEET_URL; default {DEFAULT_FLEET})")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the fleet")
    p.set_defaults(func=run, what=what)


def add_parsers(sub, kit, release) -> None:
    """Ours into ``popkit`` (``sub``), ``popkit kit`` (``kit``) and ``popkit release`` (``release``: subparsers)."""
    up = release.add_parser("upload", help="upload a bundle to the fleet (ops; POPKIT_TOKEN)")
    up.add_argument("bundle", metavar="DIR", help="<role>-<version>/ as `popkit release build` wrote it")
    _common(up, "release upload")

    ro = sub.add_parser("rollout", help="staged rollouts of a release through the fleet (ops; POPKIT_TOKEN)"
                        ).add_subparsers(dest="rollout_command", required=True)
    st = ro.add_parser("start", help="roll a release out to its role's devices, group by group")
    st.add_argument("release", help="<role>-<version>, e.g. scanner-0.3.2")
    st.add_argument("--kit", action="append", default=[], metavar="KIT", help="only this kit's devices (repeat)")
    st.add_argument("--device", action="append", default=[], metavar="ID", help="only this device (repeat)")
    st.add_argument("--groups", help="cumulative groups, e.g. 1,10%%,50%%,100%% (the default)")
    st.add_argument("--success-threshold", type=float, help="share of a group committed before the next (default 1.0)")
    st.add_argument("--error-threshold", type=float, help="share of a group failed that pauses it (default 0.2)")
    st.add_argument("--rate", dest="rate_per_min", type=int, help="devices offered per minute, at most (default 20)")
    st.add_argument("--downgrade", action="store_true", help="a rollback: devices running a newer version take it")
    _common(st, "rollout start")
    for name, help_ in (("pause", "offer no more devices"), ("resume", "go on offering (failures so far acknowledged)"),
                        ("abort", "stop for good")):
        p = ro.add_parser(name, help=help_)
        p.add_argument("id", type=int)
        if name == "pause":
            p.add_argument("--reason", help="shown with the rollout")
        _common(p, f"rollout {name}")
    sh = ro.add_parser("show", help="a rollout's groups and every device's state, or every rollout")
    sh.add_argument("id", type=int, nargs="?")
    _common(sh, "rollout show")

    hold = kit.add_parser("hold", help="hold updates for a kit (its crew or ops; POPKIT_TOKEN)")
    hold.add_argument("kit", metavar="KIT")
    hold.add_argument("--reason", help="shown in the rollouts and the kit's update state")
    _common(hold, "kit hold")
    unhold = kit.add_parser("unhold", help="lift a kit's update hold")
    unhold.add_argument("kit", metavar="KIT")
    _common(unhold, "kit unhold")
