"""The agent's door hub keeps answering claims whatever arrives on the doors' event topics."""

from __future__ import annotations

import json
import threading
import time

from agent.hub import DoorHub
from plumbing.mqtt import new_client
from tests.conftest import wait_until


def test_deeply_nested_or_huge_events_do_not_stop_the_hub(broker, tmp_path, caplog):
    hub = DoorHub("demo", broker.url, tmp_path / "claims.db").start()
    got: list[bytes] = []
    ready = threading.Event()
    c = new_client("hub-input-test")
    c.on_connect = lambda *_a: ready.set()
    c.on_message = lambda _c, _u, m: got.append(m.payload)
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    try:
        assert hub.ready.wait(10) and ready.wait(5)
        c.subscribe("popkit/v1/demo/door-1/claimed", qos=0)
        time.sleep(0.2)
        for bad in (b"[" * 200_000, b'{"kind":"checkin","data":' * 5000, b"x" * 300_000):
            c.publish("popkit/v1/demo/door-1/event", bad, qos=1).wait_for_publish(5)
        claim = {"id": 7, "event": "E1", "ticket": "T1", "ts": int(time.time() * 1000)}
        c.publish("popkit/v1/demo/door-1/claim", json.dumps(claim), qos=0)
        answer = wait_until(lambda: got and json.loads(got[0]), 5, what="the hub's answer after the bad events")
        assert answer["id"] == 7 and answer["admit"] is True
        # not parsed past their size, nor crashing the callback (paho would log it and carry on). Only
        # the hub's own loggers: a client an earlier test left behind may log its own errors here.
        mine = ("popkit.agent.hub", "popkit.mqtt.demo-hub")
        assert [r.getMessage()[:120] for r in caplog.records if r.levelname == "ERROR" and r.name in mine] == []
    finally:
        c.disconnect()
        c.loop_stop()
        hub.stop()
