"""The kit's Pi for the rehearsal: one network namespace and one mount namespace in which the
installed root's files are at their Pi paths, and every process of the Pi (the kit broker, the
agent, the crew's commands) runs in both, as on one machine.

What the Pi sees, set up once by a holder process that then sleeps (:class:`Pi`), and entered with
``nsenter`` by everything started later:

* ``/etc`` and ``/opt``: the installed root's laid over this machine's (read-only overlays), so
  ``/etc/popkit/agent.env``, ``/etc/mosquitto/conf.d/popkit-kit.conf`` and ``/opt/popkit/venv`` are
  the installed ones, with no path rewritten;
* ``/var/lib/popkit``, ``/var/lib/mosquitto``, ``/var/log/mosquitto``: the root's own folders,
  writable (the outbox, the agent's socket, the broker's persistence and log);
* ``/run``: a fresh tmpfs (the broker's pid file never meets this machine's broker).

Nothing outside the namespaces sees any of it. Root only.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
from pathlib import Path

from tests.field.kitnet import popen_in

_WRITABLE = ("/var/lib/popkit", "/var/lib/mosquitto", "/var/log/mosquitto")


def reachable_by_others(path: Path):
    """Let other users pass through (o+x, never read) each folder above ``path`` that stops them,
    and return the undo. The Pi's unit runs as ``popkit`` from this checkout's venv, which a clone
    in a private folder (``mktemp -d``, a 0700 home) would hide from it."""
    changed = []
    for folder in reversed(path.resolve().parents):
        mode = folder.stat().st_mode
        if not mode & 0o001:
            os.chmod(folder, mode | 0o001)
            changed.append((folder, mode))

    def undo() -> None:
        for folder, mode in reversed(changed):
            os.chmod(folder, mode)
    return undo


def unit_service(path: Path) -> dict[str, list[str]]:
    """A systemd unit's [Service] keys, every value of a repeated key in order (Environment=)."""
    keys: dict[str, list[str]] = {}
    section = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            keys.setdefault(k, []).append(v)
    return keys


def env_file(path: Path) -> dict[str, str]:
    """An EnvironmentFile as systemd reads it: KEY=VALUE lines, # comments, optional quotes."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            env[k.strip()] = " ".join(shlex.split(v)) if v.strip() else ""
    return env


class Pi:
    """The holder of the Pi's namespaces; ``run``/``popen`` start a process on the Pi."""

    def __init__(self, netns: str, root: Path):
        self.root = Path(root)
        setup = ["set -e"]
        for top in ("etc", "opt"):
            (self.root / top).mkdir(exist_ok=True)
            setup.append(f"mount -t overlay overlay -o lowerdir={self.root / top}:/{top} /{top}")
        parents = sorted({str(Path(d).parent) for d in _WRITABLE})
        for d in _WRITABLE:
            (self.root / d.lstrip("/")).mkdir(parents=True, exist_ok=True)
        for parent in parents:  # the folders appear under their parents, then are bound writable
            setup.append(f"mount -t overlay overlay -o lowerdir={self.root / parent.lstrip('/')}:{parent} {parent}")
        for d in _WRITABLE:
            setup.append(f"mount --bind {self.root / d.lstrip('/')} {d}")
        setup += ["mount -t tmpfs tmpfs /run", "echo up", "exec sleep infinity"]
        self.holder = popen_in(netns, ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                                       "\n".join(setup)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.holder.stdout.readline().strip()
        if line != "up":
            self.holder.kill()
            raise RuntimeError(f"the Pi's namespaces: {self.holder.stderr.read().strip()}")

    def argv(self, argv: list[str], *, user: str | None = None, groups: list[str] = (), cwd: str | None = None,
             env: dict[str, str] | None = None) -> list[str]:
        """``argv`` as the Pi runs it: in its namespaces, as ``user`` (resolved in the Pi's /etc),
        in ``cwd``, with exactly ``env`` (when given)."""
        out = ["nsenter", "-t", str(self.holder.pid), "-m", "-n"]
        if cwd or env is not None:  # (nsenter's --wd opens the folder before it enters the namespaces)
            out += ["env", *(["-i"] if env is not None else []), *([f"--chdir={cwd}"] if cwd else []),
                    *(f"{k}={v}" for k, v in (env or {}).items())]
        if user:
            out += ["setpriv", f"--reuid={user}", f"--regid={user}",
                    f"--groups={','.join(groups)}" if groups else "--init-groups"]
        return out + list(argv)

    def popen(self, argv: list[str], **kw) -> subprocess.Popen:
        opts = {k: kw.pop(k) for k in ("user", "groups", "cwd", "env") if k in kw}
        return subprocess.Popen(self.argv(argv, **opts), **kw)

    def run(self, argv: list[str], timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        opts = {k: kw.pop(k) for k in ("user", "groups", "cwd", "env") if k in kw}
        return subprocess.run(self.argv(argv, **opts), capture_output=True, text=True, timeout=timeout, **kw)

    def unit_popen(self, unit: Path, extra_env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
        """The service as systemd starts it from ``unit`` (a path in the installed root): its User,
        Group and SupplementaryGroups, EnvironmentFile then Environment=, WorkingDirectory, ExecStart."""
        svc = unit_service(unit)
        env: dict[str, str] = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
        for spec in svc.get("EnvironmentFile", []):
            path = self.root / spec.lstrip("-").lstrip("/")
            if path.exists() or not spec.startswith("-"):
                env.update(env_file(path))
        for line in svc.get("Environment", []):
            env.update(dict(item.split("=", 1) for item in shlex.split(line)))
        env.update(extra_env or {})
        groups = [svc["Group"][0], *svc.get("SupplementaryGroups", [""])[0].split()] if "Group" in svc else []
        return self.popen(shlex.split(svc["ExecStart"][0]), user=svc.get("User", [None])[0],
                          groups=groups, cwd=svc.get("WorkingDirectory", [None])[0], env=env, **kw)

    def close(self) -> None:
        if self.holder.poll() is None:
            os.kill(self.holder.pid, signal.SIGKILL)
            self.holder.wait(5)
