"""The agent's own update: a new release beside the running one, an atomic switch, a health
check, and a rollback when it fails (issue 18 section 4; docs/updates.md, "Agent updates").

Layout under the root (``/opt/popkit`` on a Pi):

```
releases/<version>/venv       each installed release; whole once releases/<version>/INSTALLED exists
venv -> releases/<version>/venv   the pointer deploy/popkit-agent.service's ExecStart goes through
update.json                   {"from", "to"} while a switch is undecided (written before it, removed on commit)
update.lock                   flock'ed by the updater while it runs
```

Every step leaves ``venv`` pointing at a whole virtualenv: a release is switched to only after
its install finished (the INSTALLED mark is the install's last act), and the pointer is replaced
by renaming a new symlink over it, never removed and re-made. A crash (power pulled, updater
killed) between any two steps therefore leaves a Pi that boots an agent; :meth:`recover` then
finds update.json and, since nothing proved the new release healthy, switches back; the agent's
unit runs it (``--recover``) before every start, so a Pi whose updater died boots the old agent.

The updater must outlive the agent it restarts, so it runs as a unit of its own (``systemd-run
--unit popkit-agent-update ...``), as root: the agent's service may write neither /opt/popkit nor
restart itself. A kit first installed with a plain-folder ``/opt/popkit/venv`` is adopted on its
first update: the folder and a symlink trade places in one ``renameat2(RENAME_EXCHANGE)``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from kits.release import BundleError, parse_public_key, parse_version, verify_bundle
from plumbing.files import sync_dir, write_atomic

log = logging.getLogger("popkit.agent.selfupdate")

ROOT = Path("/opt/popkit")
RELEASES, CURRENT, JOURNAL, INSTALLED, LOCK = "releases", "venv", "update.json", "INSTALLED", "update.lock"
LEGACY = "legacy"  # the release name of a plain-folder venv from before the first update
REQUIREMENT = "popkit[agent]=={version}"
RESTART = ["systemctl", "restart", "popkit-agent"]
HEALTH_TIMEOUT_S = 120.0

Health = Callable[[float], tuple[bool, str]]  # timeout -> (healthy, why not)


class SelfUpdateError(RuntimeError):
    """The update cannot start (a bad bundle, an older version): nothing was switched."""


@dataclass
class Outcome:
    status: str  # committed | rolled_back | unchanged
    version: str
    previous: str | None
    reason: str = ""


class AgentReleases:
    def __init__(self, root: Path = ROOT, *, restart: Callable[[], None] | None = None,
                 healthy: Health | None = None, python: str | None = None, requirement: str = REQUIREMENT,
                 health_timeout_s: float = HEALTH_TIMEOUT_S, step: Callable[[str], None] | None = None):
        self.root = Path(root)
        self.restart = restart or _systemctl_restart
        self.healthy = healthy
        # The new venv's interpreter: the one this venv was made from (a venv's own python is a link to it).
        self.python: str = python or getattr(sys, "_base_executable", None) or sys.executable
        self.requirement = requirement
        self.health_timeout_s = health_timeout_s
        self._step = step or (lambda name: None)  # tests: raise here to crash between steps

    # ------------------------------------------------------------ where things are

    def venv(self, version: str) -> Path:
        return self.root / RELEASES / version / "venv"

    def current(self) -> str | None:
        """The release ``venv`` points at; LEGACY for a plain folder; None when there is none."""
        link = self.root / CURRENT
        if link.is_symlink():
            parts = Path(os.readlink(link)).parts
            return parts[-2] if len(parts) >= 3 and parts[-3] == RELEASES else None
        return LEGACY if link.is_dir() else None

    def installed(self) -> list[str]:
        rel = self.root / RELEASES
        return sorted(p.name for p in rel.iterdir() if (p / INSTALLED).is_file()) if rel.is_dir() else []

    # ------------------------------------------------------------ the update

    def update(self, bundle: Path, public_key: bytes, *, allow_older: bool = False) -> Outcome:
        """Install the agent release in ``bundle`` (verified here, again), switch to it, restart,
        check it, and go back to the running release if the check fails."""
        with self._lock(wait=True):
            return self._update(bundle, public_key, allow_older)

    def _update(self, bundle: Path, public_key: bytes, allow_older: bool) -> Outcome:
        try:
            manifest = verify_bundle(Path(bundle), public_key)
        except BundleError as exc:
            raise SelfUpdateError(str(exc)) from None
        if manifest.role != "agent":
            raise SelfUpdateError(f"a {manifest.role} release is not for the agent")
        self._recover(restart=True)  # a switch left undecided by a crash is undone before another starts
        version, previous = manifest.version, self.current()
        if previous == version:
            return Outcome("unchanged", version, previous, "already running")
        if previous not in (None, LEGACY) and parse_version(version) < parse_version(previous) and not allow_older:
            raise SelfUpdateError(f"{version} is older than the running {previous} (a rollback must be asked for)")

        self._step("install")
        self.install(Path(bundle) / "files", version)
        if previous == LEGACY:
            self._step("adopt")
            self._adopt_legacy()  # before the journal: "back" must be a release the pointer can name
        self._step("journal")
        write_atomic(self.root / JOURNAL, json.dumps({"from": previous, "to": version}), private=False)
        self._step("switch")
        self.switch(version)
        self._step("restart")
        self.restart()
        self._step("health")
        ok, reason = self._check()
        if ok:
            self._step("commit")
            self._decided()
            self._prune(keep={version, previous})
            log.info("agent %s committed (previous %s kept)", version, previous)
            return Outcome("committed", version, previous)
        log.error("agent %s unhealthy (%s): back to %s", version, reason, previous)
        self._rollback(previous)
        return Outcome("rolled_back", version, previous, reason)

    def recover(self, restart: bool = True) -> str | None:
        """After a crash: an undecided switch goes back to where it came from. Returns the release
        now current when it changed anything, else None. While an updater runs (it holds the lock)
        its switch is its own to decide: nothing is touched. ``restart=False``: the caller is the
        agent's own start (the unit's ExecStartPre), which goes on to start what is current."""
        with self._lock(wait=False) as held:
            return self._recover(restart) if held else None

    def _recover(self, restart: bool) -> str | None:
        try:
            j = json.loads((self.root / JOURNAL).read_text())
        except FileNotFoundError:
            return None
        back = j.get("from")
        if back is None or (self.current() == back):
            self._decided()  # it never switched (or switched back already): nothing to undo
            return None
        log.warning("agent %s was never found healthy: back to %s", j.get("to"), back)
        self._rollback(back, restart)
        return back

    @contextlib.contextmanager
    def _lock(self, wait: bool):
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True  # the kernel drops the lock with the process: a crashed updater holds nothing
        finally:
            os.close(fd)

    # ------------------------------------------------------------ the steps

    def install(self, wheels: Path, version: str) -> Path:
        """``releases/<version>/venv`` with the release's wheels, offline. A folder without the
        INSTALLED mark is a crashed install: it is made again from scratch."""
        home = self.root / RELEASES / version
        venv = home / "venv"
        if (home / INSTALLED).is_file():
            return venv
        if home.exists():
            shutil.rmtree(home)
        home.mkdir(parents=True)
        # --system-site-packages as popkit/kitinstall.py makes the first venv: lgpio comes from Debian.
        _run([self.python, "-m", "venv", "--system-site-packages", str(venv)])
        _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-index", "--no-cache-dir",
              "--disable-pip-version-check", "--find-links", str(wheels), self.requirement.format(version=version)])
        self._step("installed")
        write_atomic(home / INSTALLED, version, private=False)
        return venv

    def switch(self, version: str) -> None:
        """Point ``venv`` at a release: a new symlink renamed over the old one, synced."""
        if not (self.root / RELEASES / version / INSTALLED).is_file():
            raise SelfUpdateError(f"release {version} is not installed whole")
        tmp = self.root / f".{CURRENT}.tmp"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(Path(RELEASES) / version / "venv", tmp)
        os.replace(tmp, self.root / CURRENT)
        sync_dir(self.root)

    def _adopt_legacy(self) -> None:
        """The plain-folder venv becomes releases/legacy/venv and ``venv`` a symlink to it, in one
        atomic exchange (the folder's scripts name /opt/popkit/venv/bin/python, which the symlink
        still resolves). Safe to repeat after a crash at any point of it."""
        home = self.root / RELEASES / LEGACY
        link = self.root / CURRENT
        if not link.is_symlink():
            home.mkdir(parents=True, exist_ok=True)
            placeholder = home / "venv"
            if placeholder.exists() and not placeholder.is_symlink():
                raise SelfUpdateError(f"{placeholder} and {link} are both folders: sort them out by hand")
            if not placeholder.is_symlink():
                os.symlink(Path(RELEASES) / LEGACY / "venv", placeholder)  # resolves once it sits at root/venv
            _exchange(placeholder, link)
            sync_dir(self.root)
        if not (home / INSTALLED).is_file():
            write_atomic(home / INSTALLED, LEGACY, private=False)

    def _check(self) -> tuple[bool, str]:
        if self.healthy is None:
            return True, ""
        try:
            return self.healthy(self.health_timeout_s)
        except Exception as exc:  # a check that cannot run is a check that failed
            return False, f"health check failed: {exc}"

    def _rollback(self, previous: str | None, restart: bool = True) -> None:
        if previous is None:
            self._decided()  # there was no release before: nothing to go back to
            return
        self._step("rollback_switch")
        self.switch(previous)
        if restart:
            self._step("rollback_restart")
            self.restart()
        self._decided()

    def _decided(self) -> None:
        try:
            (self.root / JOURNAL).unlink()
        except FileNotFoundError:
            return
        sync_dir(self.root)

    def _prune(self, keep: set[str | None]) -> None:
        """Only the running release and the one before it stay: a Pi's SD card is small."""
        rel = self.root / RELEASES
        for p in rel.iterdir():
            if p.name not in keep and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)


def _run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise SelfUpdateError(f"{Path(cmd[0]).name} {' '.join(cmd[1:3])} failed ({r.returncode}): "
                              f"{(r.stderr or r.stdout).strip()[-400:]}")


def _systemctl_restart() -> None:
    # Type=notify: this returns once the new agent has said READY=1 (or systemd gave up on it).
    subprocess.run(RESTART, check=True, timeout=180)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot exchange {a} and {b}: {os.strerror(err)}")


# ---------------------------------------------------------------- the running agent's health


def control_health(data: Path, kit: str, agent: str) -> Health:
    """Healthy: the new agent's control channel answers, its self-test is not ``not_ready``, and
    its link step found the broker (agent/control.py, agent/checks.py)."""
    from agent import control

    def check(timeout_s: float) -> tuple[bool, str]:
        deadline = time.monotonic() + timeout_s
        why = "the agent's control channel never answered"
        while time.monotonic() < deadline:
            try:
                verdict = None
                for msg in control.request(control.socket_path(data), kit, "selftest",
                                           timeout=max(1.0, deadline - time.monotonic())):
                    if "error" in msg:
                        why = f"self-test refused: {msg['error']}"
                    verdict = msg.get("verdict", verdict)
            except (control.ControlError, OSError) as exc:
                why = str(exc)
                time.sleep(1.0)
                continue
            if verdict is None:
                time.sleep(1.0)
                continue
            link = verdict["results"].get(agent, {}).get("problems", [])
            if verdict["status"] == "not_ready":
                return False, "self-test: not ready"
            if link:
                return False, "no link to the broker"
            return True, ""
        return False, why

    return check


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agent.updates.selfupdate",
                                description="Switch this Pi's agent to a cached release, with rollback.")
    p.add_argument("--bundle", type=Path, help="the agent bundle (<data>/updates/agent-<version>)")
    p.add_argument("--pubkey", type=Path, help="the release public key file")
    p.add_argument("--root", type=Path, default=ROOT)
    p.add_argument("--kit", type=Path, default=Path("/etc/popkit/kit.toml"))
    p.add_argument("--data", type=Path, default=Path("/var/lib/popkit"))
    p.add_argument("--allow-older", action="store_true", help="a rollback ops asked for")
    p.add_argument("--recover", action="store_true", help="only undo a switch a crash left undecided")
    p.add_argument("--result", type=Path, help="also write the outcome's JSON line here, for the agent's state "
                   "(the unit: /var/lib/popkit/updates/agent-update.json)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.recover:  # the unit's ExecStartPre: the agent is being started anyway, so no restart here
        releases = AgentReleases(args.root)
        print(json.dumps({"recovered": releases.recover(restart=False), "current": releases.current()}))
        return 0
    from kits.manifest import load_manifest

    manifest = load_manifest(args.kit)
    releases = AgentReleases(args.root, healthy=control_health(args.data, manifest.id, manifest.agent))
    if args.bundle is None or args.pubkey is None:
        p.error("--bundle and --pubkey are needed (or --recover)")
    try:
        outcome = releases.update(args.bundle, parse_public_key(args.pubkey.read_bytes()), allow_older=args.allow_older)
    except (SelfUpdateError, OSError, ValueError) as exc:
        _result(args.result, {"status": "failed", "version": _bundle_version(args.bundle), "reason": str(exc)})
        return 1
    _result(args.result, asdict(outcome))
    return 0 if outcome.status != "rolled_back" else 3


def _result(path: Path | None, result: dict) -> None:
    """The outcome on stdout (the unit's journal) and, for the agent that started us, in ``path``:
    after a rollback the agent runs the old release, and only this file tells it what happened."""
    line = json.dumps(result)
    print(line)
    if path is not None:
        write_atomic(path, line + "\n", private=False)


def _bundle_version(bundle: Path | None) -> str | None:
    # "agent-<version>": the folder's own name, as the cache names it (the bundle may not verify)
    name = bundle.name if bundle is not None else ""
    return name.split("-", 1)[1] if name.startswith("agent-") else None


if __name__ == "__main__":
    sys.exit(main())
