"""``popkit tickets revoke --kit`` on the kit's Pi beside the running agent service: no uplink, no fleet.

The agent runs as the service does (`popkit agent run`, its settings from an env file, simulated
hardware); the command reaches it through its control socket. What the crew sees: the ticket is on
the kit's list for the doors at once, the agent owes it to the fleet in its outbox, and an event the
kit does not hold is refused naming the events it does.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from kits.contract import decode
from tests.conftest import DEMO_KIT, Collector, publisher, wait_until

EVENT = "FEST25"


def popkit(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "popkit.cli", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def agent(tmp_path, broker):
    data = tmp_path / "lib" / "popkit"
    env = tmp_path / "agent.env"
    env.write_text(f"POPKIT_MQTT_URL={broker.url}\nPOPKIT_AGENT_DATA='{data}'\n")
    proc = subprocess.Popen([sys.executable, "-m", "popkit.cli", "agent", "run", "--kit", str(DEMO_KIT), "--env",
                             str(env), "--simulate"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: (data / "agent.sock").exists() or proc.poll() is not None, 30, what="the agent's socket")
        assert proc.poll() is None, proc.stderr.read()
        yield env
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)


def test_a_revocation_at_the_kit_goes_through_the_running_agent_to_the_doors_and_the_outbox(agent, broker):
    now = int(time.time())
    # The scanner's retained config, as the fleet pushed it before the uplink went: the kit holds FEST25.
    cfg = {"version": 3, "ts": now * 1000, "data": {"keys": [{"event": EVENT, "key": "ab" * 32,
                                                              "not_before": now - 60, "expires": now + 3600}]}}
    pub = publisher(broker.url)
    pub.publish("popkit/v1/demo/demo-scanner-1/config", json.dumps(cfg), qos=1, retain=True).wait_for_publish(5)
    events = Collector(broker.url, ["popkit/v1/demo/demo-agent/event"])
    try:
        assert events.ready.wait(10)

        def kit_list():
            fresh = Collector(broker.url, ["popkit/v1/demo/revocations"])
            try:
                wait_until(lambda: fresh.messages, 10, what="the kit's retained list")
                return decode("revocations", fresh.messages[-1][1])
            finally:
                fresh.close()

        wait_until(lambda: [k.event for k in kit_list().keys] == [EVENT], 10, what="the kit's list holding the key")
        done = popkit("tickets", "revoke", "--kit", str(DEMO_KIT), "--env", str(agent), "--event", EVENT,
                      "--by", "crew-anna", "k7qx2mba")
        assert done.returncode == 0, done.stderr
        assert "revoked at kit demo by crew-anna: 1 new ticket(s) for FEST25 (K7QX2MBA)" in done.stdout
        assert kit_list().revoked == {EVENT: ["K7QX2MBA"]}
        wait_until(lambda: any(json.loads(p).get("kind") == "revocation" for p in events.on("/event")), 10,
                   what="the revocation owed to the fleet")
        [sent] = [json.loads(p) for p in events.on("/event") if json.loads(p).get("kind") == "revocation"]
        assert sent["data"] == {"event": EVENT, "tickets": ["K7QX2MBA"], "by": "crew-anna"}

        again = popkit("tickets", "revoke", "--kit", str(DEMO_KIT), "--env", str(agent), "--event", EVENT, "K7QX2MBA")
        assert again.returncode == 0 and "all were revoked already" in again.stdout

        unknown = popkit("tickets", "revoke", "--kit", str(DEMO_KIT), "--env", str(agent), "--event", "NOPE-1", "X1")
        assert unknown.returncode == 2
        assert "NOPE-1" in unknown.stderr and EVENT in unknown.stderr, unknown.stderr
    finally:
        events.close()
        pub.loop_stop()
