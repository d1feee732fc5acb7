"""Installing a kit's Pi files (the ``pi/`` folder ``popkit kit provision`` writes) on the Pi, as root.

``popkit kit install FOLDER`` or, before PopKit is installed, ``deploy/install-kit.sh FOLDER``
(which runs this module with Debian's python3). Rules that shape it:

* **Idempotent.** Every file and folder is compared (bytes, mode, owner, group) before it is
  touched, and written through a temporary file renamed over it with its mode and owner already
  set. A second run changes nothing and says ``0 changes``.
* **Checked before anything is written**: the plan's paths (absolute, under /etc or /var/lib, each
  file in the overlay) and every owner it names (``mosquitto`` comes with its package). A refused
  install leaves the Pi as it was.
* **Users and groups are the root's**: ``--root DIR`` installs into a folder (tests; an SD card
  mounted on a laptop): owners are looked up in DIR/etc/passwd and made with ``useradd --root``,
  units enabled with ``systemctl --root``; the virtualenv is made only in the running root.
* **Services restart only when their files changed**, and only when systemd is running here (not in
  a chroot, not with ``--root``: there the units are only enabled). The kit's Wi-Fi is not brought
  up under the crew's feet: NetworkManager reloads it, and it comes up at the next boot.
* **Standard library only**: it runs before the virtualenv exists.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

USER = "popkit"
GROUPS = ("gpio", "dialout", "bluetooth")  # deploy/popkit-agent.service's SupplementaryGroups
HOME = "/var/lib/popkit"
VENV = Path("/opt/popkit/venv")
_ALLOWED = ("/etc/", "/var/lib/")
_REPO = Path(__file__).resolve().parent.parent


class InstallError(RuntimeError):
    """The install was refused or failed: the message names the file or step and why."""


@dataclass
class Report:
    changes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    restart: set[str] = field(default_factory=set)

    def change(self, what: str, restart: str | None = None) -> None:
        self.changes.append(what)
        if restart:
            self.restart.add(restart)


def find_plan(folder: Path) -> Path:
    """The folder holding files.json: FOLDER itself, or FOLDER/pi (the provisioning folder)."""
    for cand in (folder, folder / "pi"):
        if (cand / "files.json").is_file():
            return cand
    raise InstallError(f"{folder}: no files.json here or in {folder / 'pi'}: give the pi/ folder that "
                       "`popkit kit provision` wrote")


def load_plan(bundle: Path) -> dict:
    path = bundle / "files.json"
    try:
        plan = json.loads(path.read_text())
        entries = [*plan["dirs"], *plan["files"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InstallError(f"{path}: not a plan `popkit kit provision` wrote ({exc})") from None
    for n, e in enumerate(entries):
        p = str(e.get("path", ""))
        if not p.startswith(_ALLOWED) or ".." in Path(p).parts or not all(k in e for k in ("owner", "group", "mode")):
            raise InstallError(f"{path}: entry {n} ({p or 'no path'}): needs a path under /etc or /var/lib, "
                               "an owner, a group and a mode")
    for e in plan["files"]:
        if not (bundle / "root" / e["path"].lstrip("/")).is_file():
            raise InstallError(f"{path}: {e['path']} is not in {bundle / 'root'}")
    return plan


def _ids(root: Path, name: str) -> dict[str, tuple[int, list[str]]]:
    """name -> (id, members) from the root's /etc/passwd or /etc/group."""
    out = {}
    try:
        for line in (root / "etc" / name).read_text().splitlines():
            parts = line.split(":")
            if len(parts) >= 4:
                out[parts[0]] = (int(parts[2]), parts[3].split(",") if name == "group" and parts[3] else [])
    except OSError:
        pass
    return out


def _run(cmd: list[str], what: str) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError:
        raise InstallError(f"{what}: {cmd[0]} is not installed") from None
    if done.returncode != 0:
        raise InstallError(f"{what}: {' '.join(cmd)} failed: {(done.stderr or done.stdout).strip()}")
    return done.stdout


def ensure_user(root: Path, report: Report) -> None:
    """The agent's user, in the groups its unit names (the groups made when the root lacks them)."""
    at_root = [] if root == Path("/") else ["--root", str(root)]
    groups = _ids(root, "group")
    for g in GROUPS:
        if g not in groups:
            _run(["groupadd", *at_root, "--system", g], f"group {g}")
            report.change(f"group {g} created")
    users = _ids(root, "passwd")
    if USER not in users:
        _run(["useradd", *at_root, "--system", "--user-group", "--groups", ",".join(GROUPS), "--home-dir", HOME,
              "--no-create-home", "--shell", "/usr/sbin/nologin", USER], f"user {USER}")
        report.change(f"user {USER} created (groups {', '.join(GROUPS)})")
        return
    groups = _ids(root, "group")
    missing = [g for g in GROUPS if USER not in groups[g][1]]
    if missing:
        _run(["usermod", *at_root, "--append", "--groups", ",".join(missing), USER], f"user {USER}")
        report.change(f"user {USER} added to {', '.join(missing)}")


def _owner_ids(root: Path, entry: dict) -> tuple[int, int]:
    users, groups = _ids(root, "passwd"), _ids(root, "group")
    if entry["owner"] not in users or entry["group"] not in groups:
        who = entry["owner"] if entry["owner"] not in users else entry["group"]
        hint = " (install Mosquitto first: apt install mosquitto)" if who == "mosquitto" else ""
        raise InstallError(f"{entry['path']}: owner {who!r} does not exist in {root / 'etc'}{hint}")
    return users[entry["owner"]][0], groups[entry["group"]][0]


def check_owners(root: Path, plan: dict) -> None:
    """Every owner the plan names exists, or will (the agent's own user): before anything is written."""
    for e in [*plan["dirs"], *plan["files"]]:
        for kind, name in (("passwd", e["owner"]), ("group", e["group"])):
            if name != USER and name not in _ids(root, kind):
                hint = " (install Mosquitto first: apt install mosquitto)" if name == "mosquitto" else ""
                raise InstallError(f"{e['path']}: owner {name!r} does not exist in {root / 'etc' / kind}{hint}")


def _make_parents(path: Path) -> None:
    missing = []
    p = path.parent
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(mode=0o755)


def place_dir(root: Path, entry: dict, report: Report) -> None:
    path = root / entry["path"].lstrip("/")
    uid, gid = _owner_ids(root, entry)
    mode = int(entry["mode"], 8)
    if not path.is_dir():
        _make_parents(path)
        path.mkdir(mode=mode)
        report.change(f"{entry['path']}/ created")
    st = path.stat()
    if st.st_mode & 0o7777 != mode:
        os.chmod(path, mode)
        report.change(f"{entry['path']}/ mode {mode:04o}")
    if (st.st_uid, st.st_gid) != (uid, gid):
        os.chown(path, uid, gid)
        report.change(f"{entry['path']}/ owner {entry['owner']}:{entry['group']}")


def place_file(root: Path, bundle: Path, entry: dict, report: Report) -> None:
    path = root / entry["path"].lstrip("/")
    data = (bundle / "root" / entry["path"].lstrip("/")).read_bytes()
    uid, gid = _owner_ids(root, entry)
    mode = int(entry["mode"], 8)
    try:
        st = path.lstat()
        same = path.is_file() and not path.is_symlink() and path.read_bytes() == data
    except FileNotFoundError:
        st, same = None, False
    if not same:
        _make_parents(path)
        tmp = path.with_name(f".{path.name}.popkit-new")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchown(fd, uid, gid)
            os.fchmod(fd, mode)  # owner and mode before the bytes land under the real name
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, path)
        report.change(f"{entry['path']} {'written' if st is None else 'updated'}", entry.get("restart"))
        return
    if st.st_mode & 0o7777 != mode:
        os.chmod(path, mode)
        report.change(f"{entry['path']} mode {mode:04o}", entry.get("restart"))
    if (st.st_uid, st.st_gid) != (uid, gid):
        os.chown(path, uid, gid)
        report.change(f"{entry['path']} owner {entry['owner']}:{entry['group']}", entry.get("restart"))


def default_source() -> Path | None:
    """This checkout, when the module runs from one (deploy/install-kit.sh)."""
    return _REPO if (_REPO / "pyproject.toml").is_file() else None


def ensure_venv(root: Path, source: Path | None, find_links: Path | None, report: Report) -> None:
    """/opt/popkit/venv with PopKit and its agent extra, when it is missing (never touched when present:
    upgrading PopKit is its own step, docs/pi-install.md)."""
    if (root / VENV.relative_to("/") / "bin" / "popkit").exists():
        return
    if root != Path("/"):
        report.notes.append(f"{VENV} not made: with --root the virtualenv is made on the Pi itself (or in a chroot)")
        return
    if source is None or not source.exists():
        raise InstallError(f"{VENV} is missing and there is nothing to install into it: give --source (a PopKit "
                           "wheel or a clone)")
    _run([sys.executable if Path(sys.executable).name.startswith("python3") else "python3", "-m", "venv",
          "--system-site-packages", str(VENV)], f"the virtualenv {VENV} (Debian: apt install python3-venv)")
    pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    if find_links is not None:
        pip += ["--no-index", "--find-links", str(find_links)]
    _run([*pip, f"{source.resolve()}[agent]"], f"PopKit into {VENV}")
    report.change(f"{VENV} made, PopKit installed from {source}")


def _unit_file(root: Path, unit: str) -> Path | None:
    for d in ("etc/systemd/system", "lib/systemd/system", "usr/lib/systemd/system"):
        if (root / d / unit).exists():
            return root / d / unit
    return None


def _enabled(root: Path, unit: str) -> bool:
    # the link names the unit's path in the root, which outside it may dangle: lexists, not exists
    return any(os.path.lexists(d / unit) for d in (root / "etc/systemd/system").glob("*.wants"))


def systemd_running(root: Path) -> bool:
    """systemd runs this root (not a chroot or a folder)."""
    if root != Path("/") or not Path("/run/systemd/system").is_dir():
        return False
    try:  # in a chroot, / is not init's root
        return os.stat("/").st_ino == os.stat("/proc/1/root/.").st_ino and \
            os.stat("/").st_dev == os.stat("/proc/1/root/.").st_dev
    except OSError:
        return False


def enable_units(root: Path, units: list[str], report: Report) -> None:
    at_root = [] if root == Path("/") else [f"--root={root}"]
    for unit in units:
        if _unit_file(root, unit) is None:
            report.notes.append(f"{unit} not installed here: not enabled (apt install {unit.split('.')[0]})")
            continue
        if not _enabled(root, unit):
            _run(["systemctl", *at_root, "enable", unit], f"enabling {unit}")
            report.change(f"{unit} enabled")


def apply_changes(report: Report, units: list[str]) -> None:
    """Tell the running systemd: reload units, restart what changed, start the kit's services."""
    _run(["systemctl", "daemon-reload"], "systemd")
    for unit in sorted(report.restart - {"NetworkManager"}):
        if _unit_file(Path("/"), unit) is not None:
            _run(["systemctl", "restart", unit], f"restarting {unit}")
            report.notes.append(f"{unit} restarted")
    if "NetworkManager" in report.restart and shutil.which("nmcli"):
        _run(["nmcli", "connection", "reload"], "NetworkManager")
        report.notes.append("the kit network is loaded: it comes up at the next boot, or now with "
                            "`sudo nmcli connection up popkit-kit` (this drops a Wi-Fi client connection on its "
                            "interface)")
    for unit in units:
        if _unit_file(Path("/"), unit) is not None:
            subprocess.run(["systemctl", "start", unit], capture_output=True)


def install(folder: Path, root: Path = Path("/"), source: Path | None = None, find_links: Path | None = None,
            venv: bool = True) -> Report:
    """Put the Pi's files from ``folder`` in place under ``root``; see the module's rules."""
    if os.geteuid() != 0:
        raise InstallError("run as root (sudo): it creates a user and writes /etc")
    root = Path(root).resolve()
    bundle = find_plan(Path(folder))
    plan = load_plan(bundle)
    check_owners(root, plan)
    report = Report()
    ensure_user(root, report)
    for entry in plan["dirs"]:
        place_dir(root, entry, report)
    for entry in plan["files"]:
        place_file(root, bundle, entry, report)
    if venv:
        ensure_venv(root, source if source is not None else default_source(), find_links, report)
    enable_units(root, plan.get("enable", []), report)
    if systemd_running(root):
        if report.changes:
            apply_changes(report, plan.get("enable", []))
    else:
        report.notes.append("systemd is not running here: units enabled only, nothing started")
    return report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", type=Path, help="the pi/ folder `popkit kit provision` wrote (or the provisioning folder)")
    p.add_argument("--root", type=Path, default=Path("/"), help="install into this folder instead of / (tests)")
    p.add_argument("--source", type=Path, help="PopKit wheel or clone for the virtualenv (default: this clone)")
    p.add_argument("--find-links", type=Path, help="install the virtualenv offline from this folder of wheels")
    p.add_argument("--no-venv", dest="venv", action="store_false", help="leave /opt/popkit/venv alone")


def run(args: argparse.Namespace) -> int:
    try:
        report = install(args.folder, args.root, args.source, args.find_links, args.venv)
    except InstallError as exc:
        print(f"popkit kit install: {exc}", file=sys.stderr)
        return 3
    for line in report.changes:
        print(f"changed: {line}")
    for line in report.notes:
        print(f"note: {line}")
    print(f"{len(report.changes)} change(s) under {args.root}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="install-kit", description="Install a kit's Pi files (as root).")
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
