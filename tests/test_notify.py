"""Alert webhooks (fleet/alerts/notify.py) against a real HTTP server in a thread: what it receives, when,
retries, failures, and that a webhook that hangs never holds up the evaluator."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fleet.alerts import Firing, evaluate
from fleet.metrics import ALERT_METRICS, AlertMetrics
from fleet.alerts.notify import Notifier, NotifyConfig
from fleet.store import Store
from tests.test_alerts import CFG, SimKit, now_ms

S = 1000


class Webhook:
    """A local HTTP server recording each POST; answers with the scripted statuses (then 200), or
    holds each request until ``release`` is set when ``hang``."""

    def __init__(self):
        self.received: list[dict] = []
        self.headers: list[dict] = []
        self.statuses: list[int] = []
        self.hang = False
        self.release = threading.Event()
        self.lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with hook.lock:
                    hook.received.append(body)
                    hook.headers.append(dict(self.headers))
                    status = hook.statuses.pop(0) if hook.statuses else 200
                if hook.hang:
                    hook.release.wait(30)
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/popkit"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook():
    w = Webhook()
    yield w
    w.close()


@pytest.fixture
def store(tmp_path):
    from kits.manifest import load_manifest
    from tests.conftest import DEMO_KIT

    s = Store.open(f"sqlite:///{tmp_path / 'fleet.db'}")
    s.registry.register_kit(load_manifest(DEMO_KIT))
    yield s
    s.close()


def notifier(store, url, metrics=None, **cfg) -> Notifier:
    params = dict(grace_s=120, repeat_s=600, timeout_s=2, retries=3, backoff_s=0.01, poll_s=0.05)
    params.update(cfg)
    return Notifier(store, NotifyConfig(url=url, **params), metrics=metrics or AlertMetrics())


def fire(store, now: int, rule: str = "paper_out", subject: str = "demo-printer") -> int:
    store.alerts.sync([Firing(subject, "demo", rule, "critical", f"{subject}: {rule}", {}, 1)], set(), now)
    return store.alerts.list(rule=rule, subject=subject, state="active")[0]["id"]


def calm(store, now: int) -> None:
    store.alerts.sync([], set(), now)


def test_webhook_after_the_grace_period_then_every_repeat_until_acknowledged_and_on_resolve(fleet, broker, webhook):
    sim = SimKit(fleet, broker.url)
    cfg = dataclasses.replace(CFG, offline_grace_s=86_400)  # hours pass below: only the battery matters here
    try:
        sim.battery("demo-power", soc=15)
        t = now_ms()
        evaluate(fleet.store, t, cfg)
        n = notifier(fleet.store, webhook.url)
        assert n.run_once(t + 60 * S) == 0 and webhook.received == []  # within the grace period
        assert n.run_once(t + 121 * S) == 1
        [sent] = webhook.received
        [alert] = fleet.api.get("/api/v1/alerts").json()["items"]
        assert webhook.headers[0]["Content-Type"] == "application/json"
        assert sent == {
            "event": "opened", "id": alert["id"], "rule": "low_soc", "subject": "demo-power", "kit_id": "demo",
            "severity": "warning", "state": "open", "message": alert["message"], "first_seen_ms": t,
            "last_seen_ms": t, "count": 1, "resolved_ms": None, "resolved_by": None, "details": alert["details"],
            "notification": 1, "sent_ms": t + 121 * S,
            "links": {"alert": f"/api/v1/alerts/{alert['id']}", "acknowledge": f"/api/v1/alerts/{alert['id']}/acknowledge",
                      "resolve": f"/api/v1/alerts/{alert['id']}/resolve"},
        }
        assert n.run_once(t + 300 * S) == 0  # the repeat interval has not passed
        assert n.run_once(t + 721 * S) == 1
        assert webhook.received[-1]["event"] == "reminder" and webhook.received[-1]["notification"] == 2

        r = fleet.api.post(f"/api/v1/alerts/{alert['id']}/acknowledge", json={"by": "ops-anna"})
        assert r.status_code == 200
        assert n.run_once(t + 1500 * S) == 0 and n.run_once(t + 5000 * S) == 0  # acknowledged: no repeats

        sim.battery("demo-power", soc=70, i=5.0)
        evaluate(fleet.store, t + 5001 * S, cfg)
        assert n.run_once(t + 5002 * S) == 1
        assert webhook.received[-1]["event"] == "resolved" and webhook.received[-1]["state"] == "resolved"
        assert webhook.received[-1]["resolved_by"] == "auto"
        assert n.run_once(t + 9000 * S) == 0  # told once
        hist = [h["what"] for h in fleet.api.get(f"/api/v1/alerts/{alert['id']}").json()["history"]]
        assert hist == ["opened", "notified", "notified", "acknowledged", "resolved", "notified"]
        assert fleet.api.get(f"/api/v1/alerts/{alert['id']}").json()["notify_count"] == 3
    finally:
        sim.close()


def test_an_alert_resolved_within_the_grace_period_is_never_notified(store, webhook):
    t = now_ms()
    fire(store, t)
    calm(store, t + 30 * S)
    n = notifier(store, webhook.url)
    assert n.run_once(t + 200 * S) == 0 and n.run_once(t + 2000 * S) == 0
    assert webhook.received == []


def test_retries_on_500_then_delivers(store, webhook):
    webhook.statuses = [500, 503]
    metrics = AlertMetrics()
    t = now_ms()
    alert_id = fire(store, t)
    n = notifier(store, webhook.url, metrics, grace_s=0)
    assert n.run_once(t) == 1
    assert len(webhook.received) == 3 and webhook.received[0] == webhook.received[2]
    assert (metrics.notifications_sent, metrics.notifications_failed) == (1, 0)
    last = store.alerts.get(alert_id)["history"][-1]
    assert last["what"] == "notified" and last["detail"] == "opened: HTTP 200 after 2 retries"


def test_giving_up_is_counted_recorded_and_tried_again_a_repeat_interval_later(store, webhook):
    from fleet.auth.testing import ops_client

    from fleet.api.app import create_app

    webhook.statuses = [500] * 4
    t = now_ms()
    alert_id = fire(store, t)
    before = ALERT_METRICS.notifications_failed
    n = notifier(store, webhook.url, ALERT_METRICS, grace_s=0, retries=3)
    assert n.run_once(t) == 1
    assert len(webhook.received) == 4  # the first try and 3 retries
    assert ALERT_METRICS.notifications_failed == before + 1
    alert = store.alerts.get(alert_id)
    assert alert["history"][-1]["what"] == "notify_failed" and "HTTP 500" in alert["history"][-1]["detail"]
    assert alert["notify_count"] == 0
    metrics = ops_client(create_app(store)).get("/metrics").text
    assert f"popkit_notifications_failed_total {before + 1}" in metrics
    assert 'popkit_alerts_open{rule="paper_out",severity="critical"} 1' in metrics

    assert n.run_once(t + 60 * S) == 0  # not hammering it: the next try is a repeat interval later
    assert n.run_once(t + 601 * S) == 1 and len(webhook.received) == 5
    assert webhook.received[-1]["event"] == "opened"  # never delivered, so still the first notification
    assert store.alerts.get(alert_id)["notify_count"] == 1


def test_a_client_error_is_not_retried(store, webhook):
    webhook.statuses = [404]
    metrics = AlertMetrics()
    t = now_ms()
    alert_id = fire(store, t)
    notifier(store, webhook.url, metrics, grace_s=0).run_once(t)
    assert len(webhook.received) == 1 and metrics.notifications_failed == 1
    assert store.alerts.get(alert_id)["history"][-1]["detail"] == "opened: gave up: HTTP 404"


def test_two_workers_send_one_notification(store, tmp_path, webhook):
    t = now_ms()
    fire(store, t)
    other = Store.open(str(store.engine.url))
    try:
        workers = [notifier(store, webhook.url, grace_s=0), notifier(other, webhook.url, grace_s=0)]
        threads = [threading.Thread(target=w.run_once, args=(t,)) for w in workers]
        for th in threads:
            th.start()
        for th in threads:
            th.join(10)
    finally:
        other.close()
    assert len(webhook.received) == 1


def test_a_hanging_webhook_never_delays_evaluation(fleet, broker, webhook):
    webhook.hang = True
    sim = SimKit(fleet, broker.url)
    n = notifier(fleet.store, webhook.url, grace_s=0, timeout_s=20, retries=0).start()
    try:
        sim.battery("demo-power", soc=15)
        evaluate(fleet.store, now_ms(), CFG)
        from tests.conftest import wait_until

        wait_until(lambda: webhook.received, what="the notifier to call the webhook (which then hangs)")
        # The webhook holds the notifier's request; evaluation, ingest and the API go on.
        t0 = time.monotonic()
        sim.battery("demo-power", soc=70, i=5.0)
        r = evaluate(fleet.store, now_ms(), CFG)
        assert r.resolved == 1 and time.monotonic() - t0 < 2.0
        assert fleet.api.get("/api/v1/alerts").json()["items"][0]["state"] == "resolved"
    finally:
        webhook.release.set()
        n.stop()
        sim.close()
