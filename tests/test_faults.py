"""The broker SIGKILLed under load and back after 30 s: the ledger of what every producer's outbox
sent against what the fleet stored balances (nothing lost, nothing stored twice).

Load: 40 simulated kits (200 devices, popkit sim fleet's Swarm) at a message a second each, plus an
agent's FleetLink at 20 messages a second, all through one Mosquitto into the fleet. The broker
dies with messages in flight both ways (PUBLISHes, PUBACKs, receipts); for 30 s the producers keep
working into their outboxes; then the broker is back and everyone reconnects with jitter.
"""

from __future__ import annotations

import time

from agent.link import FleetLink
from kits.contract import Event
from popkit.kitregister import register_kits
from simulators.swarm import Swarm
from tests.conftest import start_fleet, wait_until


def stored_counts(store) -> dict[tuple[str, str], tuple[int, int]]:
    """(device, boot) -> (rows, distinct seqs) over both ledger tables."""
    out: dict[tuple[str, str], tuple[int, int]] = {}
    with store.engine.connect() as conn:
        for table in ("telemetry", "events"):
            for device, boot, rows, distinct in conn.exec_driver_sql(
                    f"SELECT device_id, boot, count(*), count(DISTINCT seq) FROM {table} GROUP BY device_id, boot"):
                r, d = out.get((device, boot), (0, 0))
                out[(device, boot)] = (r + rows, d + distinct)
    return out


def test_broker_sigkilled_under_load_back_after_30s_loses_and_doubles_nothing(broker, tmp_path):
    db_url = f"sqlite:///{tmp_path / 'fleet.db'}"
    swarm = Swarm(40, 5, broker.url, period_s=1.0, seed=8, resend_after_s=5.0)
    register_kits(db_url, swarm.manifests())
    fleet = start_fleet(broker.url, db_url)
    agent = FleetLink("demo", "demo-agent", "agent", broker.url, tmp_path / "agent.db", resend_after_s=5,
                      hosted={"demo-printer": "printer"}).start()
    swarm.start_in_thread(timeout=30)
    sent = 0
    try:
        wait_until(lambda: swarm.stats().startup_s is not None and agent.connected.is_set(), 30, what="all connected")

        def agent_burst(seconds: float) -> None:
            nonlocal sent
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                sent += 1
                agent.emit("demo-printer", "event", Event, kind="printed", data={"job": sent})
                time.sleep(0.05)

        agent_burst(5)
        before = fleet.ingest.metrics.ingested
        assert before > 0, "load reached the fleet before the kill"
        broker.kill()
        killed = time.monotonic()
        agent_burst(30 - (time.monotonic() - killed))  # the producers keep working for 30 s
        broker.start()
        agent_burst(5)

        swarm.emitting = False
        wait_until(lambda: swarm.stats().outstanding == 0 and len(agent.outbox) == 0, 120,
                   what="every producer's outbox drained by receipts")
        stored = stored_counts(fleet.store)
        ledger = {(d.device, d.boot): d.emitted for d in swarm.ledger().values()}
        ledger[("demo-printer", agent.boot)] = sent
        lost = sum(n - stored.get(key, (0, 0))[1] for key, n in ledger.items())
        duplicates = sum(rows - distinct for rows, distinct in stored.values())
        st = swarm.stats()
        print(f"\nbroker SIGKILL for 30 s under load: {sum(ledger.values())} messages from {len(ledger)} producers, "
              f"{st.resends} swarm resends, {fleet.ingest.metrics.duplicates} duplicate arrivals; "
              f"lost {lost}, duplicates {duplicates}; all back {st.last_recovery_s:.1f}s after the first drop")
        assert (lost, duplicates) == (0, 0)
        assert all(stored[key][1] == n for key, n in ledger.items())
        assert st.waves >= 1 and st.reconnects >= len(swarm.devices), "every device went through the outage"
    finally:
        swarm.stop()
        agent.stop()
        fleet.ingest.stop()
        fleet.store.close()
