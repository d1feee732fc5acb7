"""The agent's own A/B update (agent/updates/selfupdate.py): real virtualenvs and offline pip
installs of small stand-in wheels (a ``popkit`` wheel and a pinned dependency), signed as a real
agent bundle. systemd is absent here, so the test's restart records what ``venv`` points at and
its health check runs the release through ``<root>/venv`` as the unit's ExecStart would."""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from agent.updates.selfupdate import JOURNAL, LEGACY, AgentReleases, SelfUpdateError
from kits.release import new_private_key, public_key_of, write_bundle


def wheel(name: str, version: str, files: dict[str, str], requires: tuple[str, ...] = ()) -> tuple[str, bytes]:
    """A pure-Python wheel, written by hand (a build backend would take longer than the test)."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    meta = "".join([f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
                    *(f"Requires-Dist: {r}\n" for r in requires)])
    content = {**files, f"{info}/METADATA": meta,
               f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    for path, text in content.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    content[f"{info}/RECORD"] = "\n".join(record + [f"{info}/RECORD,,"]) + "\n"
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for path, text in content.items():
            z.writestr(path, text)
    return f"{dist}-{version}-py3-none-any.whl", buf.getvalue()


def agent_bundle(out: Path, version: str, priv: bytes, healthy: bool = True) -> Path:
    app = wheel("popkit", version, {"popkit_standin/__init__.py": f"VERSION = {version!r}\nHEALTHY = {healthy}\n"},
                requires=("popkit-dep==1.0",))
    dep = wheel("popkit-dep", "1.0", {"popkit_dep/__init__.py": "PINNED = True\n"})
    return write_bundle(out, "agent", version, None, dict([app, dep]), priv, created_ms=1)


def run_release(root: Path) -> tuple[bool, str]:
    """What the restarted agent would be: the release behind <root>/venv, imported and checked."""
    py = root / "venv" / "bin" / "python"
    r = subprocess.run([str(py), "-c", "import popkit_standin as p, popkit_dep; print(p.VERSION); assert p.HEALTHY"],
                       capture_output=True, text=True, timeout=30)
    return r.returncode == 0, r.stdout.strip() or r.stderr.strip()[-200:]


class Pi:
    """The test's stand-in for systemd: restart notes which release is now live."""

    def __init__(self, root: Path):
        self.root = root
        self.restarts: list[str] = []

    def restart(self) -> None:
        self.restarts.append(run_release(self.root)[1])

    def healthy(self, _timeout: float) -> tuple[bool, str]:
        ok, out = run_release(self.root)
        return ok, "" if ok else f"the new agent failed its self-test: {out}"


def releases(root: Path, step=None) -> tuple[AgentReleases, Pi]:
    pi = Pi(root)
    return AgentReleases(root, restart=pi.restart, healthy=pi.healthy, health_timeout_s=5, step=step), pi


@pytest.fixture(scope="module")
def key():
    priv = new_private_key()
    return priv, public_key_of(priv)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, key):
    out = tmp_path_factory.mktemp("bundles")
    priv, _ = key
    return {"1.0.0": agent_bundle(out, "1.0.0", priv), "2.0.0": agent_bundle(out, "2.0.0", priv),
            "3.0.0": agent_bundle(out / "bad", "3.0.0", priv, healthy=False)}


@pytest.fixture(scope="module")
def on_v1(tmp_path_factory, bundles, key):
    """A Pi running agent 1.0.0 (installed by the updater itself, from nothing)."""
    root = tmp_path_factory.mktemp("on-v1") / "opt"
    root.mkdir()
    r, _ = releases(root)
    assert r.update(bundles["1.0.0"], key[1]).status == "committed"
    return root


@pytest.fixture(scope="module")
def staged(tmp_path_factory, on_v1, bundles):
    """Running 1.0.0 with 2.0.0 and 3.0.0 installed beside it (as after an update that crashed
    past its install): the crash tests then spend no time installing again."""
    root = tmp_path_factory.mktemp("staged") / "opt"
    shutil.copytree(on_v1, root, symlinks=True)
    for v in ("2.0.0", "3.0.0"):
        releases(root)[0].install(bundles[v] / "files", v)
    return root


def copy(template: Path, tmp_path: Path) -> Path:
    root = tmp_path / "opt"
    shutil.copytree(template, root, symlinks=True)
    return root


def test_update_succeeds_and_keeps_the_previous(tmp_path, on_v1, bundles, key):
    root = copy(on_v1, tmp_path)
    r, pi = releases(root)
    assert r.current() == "1.0.0" and run_release(root) == (True, "1.0.0")
    outcome = r.update(bundles["2.0.0"], key[1])
    assert (outcome.status, outcome.version, outcome.previous) == ("committed", "2.0.0", "1.0.0")
    assert pi.restarts == ["2.0.0"]
    assert r.current() == "2.0.0" and run_release(root) == (True, "2.0.0")
    assert (root / "venv").is_symlink() and not (root / JOURNAL).exists()
    assert r.installed() == ["1.0.0", "2.0.0"]  # the previous is kept
    assert r.update(bundles["2.0.0"], key[1]).status == "unchanged"
    with pytest.raises(SelfUpdateError, match="older"):
        r.update(bundles["1.0.0"], key[1])
    assert r.update(bundles["1.0.0"], key[1], allow_older=True).status == "committed"  # ops asked for it
    assert run_release(root) == (True, "1.0.0")


def test_unhealthy_update_rolls_back(tmp_path, staged, bundles, key):
    root = copy(staged, tmp_path)
    r, pi = releases(root)
    outcome = r.update(bundles["3.0.0"], key[1])
    assert outcome.status == "rolled_back" and "self-test" in outcome.reason
    assert pi.restarts == ["3.0.0", "1.0.0"]  # 3.0.0 ran (and failed its check), then 1.0.0 again
    assert r.current() == "1.0.0" and run_release(root) == (True, "1.0.0")
    assert not (root / JOURNAL).exists()
    assert "3.0.0" in r.installed()  # kept, so a retry need not install again; pruned at the next commit


def test_a_check_that_raises_or_times_out_is_a_failure(tmp_path, staged, bundles, key):
    root = copy(staged, tmp_path)
    pi = Pi(root)

    def broken(_t):
        raise TimeoutError("control channel silent")

    r = AgentReleases(root, restart=pi.restart, healthy=broken)
    outcome = r.update(bundles["2.0.0"], key[1])
    assert outcome.status == "rolled_back" and "control channel silent" in outcome.reason
    assert run_release(root) == (True, "1.0.0")


def test_refused_bundles_switch_nothing(tmp_path, on_v1, bundles, key):
    root = copy(on_v1, tmp_path)
    r, pi = releases(root)
    other = public_key_of(new_private_key())
    with pytest.raises(SelfUpdateError, match="signature"):
        r.update(bundles["2.0.0"], other)
    tampered = tmp_path / "tampered"
    shutil.copytree(bundles["2.0.0"], tampered)
    whl = next((tampered / "files").glob("popkit-2*.whl"))
    whl.write_bytes(whl.read_bytes() + b"x")
    with pytest.raises(SelfUpdateError, match="mismatch"):
        r.update(tampered, key[1])
    scanner = write_bundle(tmp_path / "s", "scanner", "9.0.0", 6, {"app_main.mpy": b"x"}, key[0], created_ms=1)
    with pytest.raises(SelfUpdateError, match="not for the agent"):
        r.update(scanner, key[1])
    assert r.current() == "1.0.0" and pi.restarts == [] and r.installed() == ["1.0.0"]


AFTER_INSTALL = ["journal", "switch", "restart", "health", "commit"]


class Crash(Exception):
    pass


def crash_at(name):
    def step(s):
        if s == name:
            raise Crash(s)
    return step


@pytest.mark.parametrize("step,template,bundle", [
    *[(s, "staged", "2.0.0") for s in AFTER_INSTALL],
    ("rollback_switch", "staged", "3.0.0"), ("rollback_restart", "staged", "3.0.0"),
    ("install", "v1", "2.0.0"), ("installed", "v1", "2.0.0")])
def test_a_crash_at_every_step_leaves_a_working_agent(tmp_path, step, template, bundle, on_v1, staged, bundles, key):
    root = copy(staged if template == "staged" else on_v1, tmp_path)
    r, _ = releases(root, step=crash_at(step))
    with pytest.raises(Crash):
        r.update(bundles[bundle], key[1])
    # The power is pulled here: whatever ``venv`` points at is a whole release that starts (3.0.0
    # starts too; it is its self-test that fails, which the recovery below answers).
    _ok, version = run_release(root)
    assert version in ("1.0.0", "2.0.0", "3.0.0"), (step, version)
    # The agent's next start (ExecStartPre) undoes a switch nothing proved healthy.
    r2, pi = releases(root)
    r2.recover(restart=False)
    assert pi.restarts == [] and r2.current() == "1.0.0" and run_release(root) == (True, "1.0.0")
    assert not (root / JOURNAL).exists()
    assert r2.update(bundles["2.0.0"], key[1]).status == "committed"  # and the update, asked again, goes through
    assert run_release(root) == (True, "2.0.0")


def test_recovery_leaves_a_running_updaters_switch_alone(tmp_path, staged, bundles, key):
    root = copy(staged, tmp_path)
    seen = {}

    def during_health(_t):  # the agent's unit restarts while the updater waits for its verdict
        seen["recovered"] = AgentReleases(root).recover(restart=False)
        seen["current"] = AgentReleases(root).current()
        return True, ""

    outcome = AgentReleases(root, restart=lambda: None, healthy=during_health).update(bundles["2.0.0"], key[1])
    assert seen == {"recovered": None, "current": "2.0.0"} and outcome.status == "committed"


def test_a_plain_folder_venv_is_adopted_and_can_be_rolled_back_to(tmp_path, on_v1, bundles, key):
    """A kit installed before updates existed: /opt/popkit/venv is a folder, not a symlink."""
    root = tmp_path / "opt"
    root.mkdir()
    legacy = root / "venv"
    shutil.copytree(on_v1 / "releases" / "1.0.0" / "venv", legacy, symlinks=True)
    r, pi = releases(root, step=crash_at("journal"))
    assert r.current() == LEGACY
    with pytest.raises(Crash):  # crash just after the adoption: still the old agent, now behind the symlink
        r.update(bundles["3.0.0"], key[1])
    assert (root / "venv").is_symlink() and run_release(root) == (True, "1.0.0")
    r, pi = releases(root)
    outcome = r.update(bundles["3.0.0"], key[1])
    assert outcome.status == "rolled_back" and outcome.previous == LEGACY
    assert r.current() == LEGACY and run_release(root) == (True, "1.0.0")


def test_the_default_health_check_asks_the_agents_control_channel(tmp_path):
    """control_health against the real control channel (agent/control.py) a restarted agent opens."""
    import asyncio
    import threading

    from agent import control
    from agent.updates.selfupdate import control_health

    answers = {"verdict": None}

    async def selftest(_req, reply):
        reply({"step": {"device": "kit-agent", "label": "link"}})
        reply({"verdict": answers["verdict"], "end": True})

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    check = control_health(tmp_path, "kit-1", "kit-agent")
    assert check(1.5) == (False, f"no agent listens at {control.socket_path(tmp_path)} (No such file or directory)")

    server = asyncio.run_coroutine_threadsafe(
        control.ControlServer(control.socket_path(tmp_path), "kit-1", {"selftest": selftest}).start(), loop).result(5)
    try:
        ok = {"detail": "connected", "problems": []}
        no_link = {"detail": "no broker", "problems": [{"device": "kit-agent", "severity": "warning", "what": "no link"}]}
        answers["verdict"] = {"status": "ready", "took_ms": 5, "results": {"kit-agent": ok}}
        assert check(5) == (True, "")
        answers["verdict"] = {"status": "degraded", "took_ms": 5, "results": {"kit-agent": no_link}}
        assert check(5) == (False, "no link to the broker")
        answers["verdict"] = {"status": "not_ready", "took_ms": 5, "results": {"kit-agent": ok}}
        assert check(5) == (False, "self-test: not ready")
        assert control_health(tmp_path, "kit-2", "kit-agent")(1.5)[0] is False  # another kit's agent is no answer
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
