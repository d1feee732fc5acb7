"""The agent as a process: `popkit agent run --simulate`, killed with a full outbox and restarted."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys

from tests.conftest import start_fleet, wait_until

FAST_KIT = """
id = "demo"
name = "Agent kill test"
agent = "demo-agent"

[[devices]]
id = "demo-power"
role = "powerbank"
model = "victron-bmv700"
bus = "serial:/dev/ttyUSB0"
telemetry_s = 0.01
"""


def outbox_keys(path) -> set[tuple[str, str, int]]:
    if not path.exists():
        return set()
    db = sqlite3.connect(path)
    try:
        return {tuple(r) for r in db.execute("SELECT device, boot, seq FROM outbox")}
    except sqlite3.OperationalError:  # not created yet
        return set()
    finally:
        db.close()


def spawn_agent(manifest, mqtt_url, data_dir) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "popkit.cli", "agent", "run", "--kit", str(manifest), "--mqtt", mqtt_url,
         "--data", str(data_dir), "--simulate"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def test_agent_sigkilled_with_500_in_its_outbox_delivers_all_once_after_restart(broker, tmp_path):
    manifest = tmp_path / "kit.toml"
    manifest.write_text(FAST_KIT)
    data = tmp_path / "agent"
    outbox = data / "demo-outbox.db"
    # No fleet yet: nothing is receipted, so the outbox only grows, as in a venue with no uplink.
    agent = spawn_agent(manifest, broker.url, data)
    try:
        wait_until(lambda: len(outbox_keys(outbox)) >= 500, timeout=60, what="500 messages in the agent's outbox")
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
        owed = outbox_keys(outbox)
        assert len(owed) >= 500 and {d for d, _, _ in owed} <= {"demo-power", "demo-agent"}

        fleet = start_fleet(broker.url, f"sqlite:///{tmp_path / 'fleet.db'}", kits=(manifest,))
        agent = spawn_agent(manifest, broker.url, data)
        try:
            def stored() -> set[tuple[str, str, int]]:
                with fleet.store.engine.connect() as conn:  # telemetry, and the power-up's readiness event
                    return {tuple(r) for r in conn.exec_driver_sql(
                        "SELECT device_id, boot, seq FROM telemetry UNION ALL SELECT device_id, boot, seq FROM events")}

            wait_until(lambda: owed <= stored(), timeout=60, what="every owed message stored")
            with fleet.store.engine.connect() as conn:
                total, distinct = conn.exec_driver_sql(
                    "SELECT count(*), count(DISTINCT device_id || ':' || boot || ':' || seq) FROM "
                    "(SELECT device_id, boot, seq FROM telemetry UNION ALL SELECT device_id, boot, seq FROM events)").one()
            assert total == distinct
            # Those from before the kill came back under their old boot id, not renumbered.
            assert {b for _, b, _ in owed}.isdisjoint({b for _, b, _ in outbox_keys(outbox) - owed})
            wait_until(lambda: not (owed & outbox_keys(outbox)), what="the owed messages receipted out of the outbox")
        finally:
            fleet.ingest.stop()
            fleet.store.close()
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(15)


LIGHTS_KIT = """
id = "lk"
name = "Agent stop test"
agent = "lk-agent"

[[devices]]
id = "lk-door"
role = "scanner"

[[devices]]
id = "lk-lamp"
role = "light"
model = "elk-bledom"
bus = "ble:AA:BB:CC:DD:EE:10"
"""


def test_a_stop_during_the_power_up_self_test_ends_the_agent(broker, tmp_path):
    """systemd's SIGTERM while the self-test waits for a door that is not coming: the agent stops
    there. It used to hang for good: the self-test's end woke the lights' loops just as they were
    cancelled, and asyncio.wait_for (3.11) swallowed the cancel."""
    import time

    manifest = tmp_path / "kit.toml"
    manifest.write_text(LIGHTS_KIT)
    agent = subprocess.Popen([sys.executable, "-m", "popkit.cli", "agent", "run", "--kit", str(manifest), "--mqtt",
                              broker.url, "--data", str(tmp_path / "agent"), "--simulate"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        log = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # the self-test has begun (and waits on the door)
            line = agent.stdout.readline()
            log.append(line)
            if "self-test of" in line:
                break
        assert any("self-test of" in ln for ln in log), "".join(log)
        time.sleep(0.5)
        agent.send_signal(signal.SIGTERM)
        out, _ = agent.communicate(timeout=15)
        assert agent.returncode == 0, "".join(log) + out
        assert "stopped during the power-up self-test" in out
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(5)
