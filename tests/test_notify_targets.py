"""Notification targets and escalation (fleet/notify/, fleet/alerts/notify.py) against real HTTP receivers
on 127.0.0.1: the first target after the grace period, its repeats, the next target after them, back to
normal to every target told; per-kit, per-rule and severity filters; retries with backoff; failures counted
by target and reason; a failing or hanging target never holds up another; the API ops manage them with.

Time is passed to ``run_once`` (the policy's minutes go by in a call), except where the threads' own
behaviour is the point."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fleet.alerts import Firing
from fleet.alerts.notify import Notifier, NotifyConfig
from fleet.api.app import create_app
from fleet.auth.testing import client_as, ops_client
from fleet.notify.delivery import DeliveryConfig
from fleet.notify.metrics import NotifyMetrics, render_notify_metrics
from fleet.notify.delivery import Delivery
from fleet.notify.model import Policy
from fleet.store import Store
from popkit.broker import free_port
from tests.conftest import wait_until
from tests.test_alerts import now_ms

S = 1000
POLICY = Policy(grace_s=120, repeat_s=600, repeats=1)


class Receiver:
    """A webhook on 127.0.0.1 recording each POST; answers with the scripted statuses (then 200), or
    holds each request until ``release`` is set when ``hang``."""

    def __init__(self):
        self.received: list[dict] = []
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

    def events(self) -> list[tuple[str, int]]:
        return [(b["event"], b["id"]) for b in self.received]

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers():
    made: list[Receiver] = []

    def make() -> Receiver:
        made.append(Receiver())
        return made[-1]

    yield make
    for r in made:
        r.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    """The fleet's store with the demo kit, on each backend (the claims are compare-and-sets on both)."""
    from kits.manifest import load_manifest
    from tests.conftest import DEMO_KIT

    url = f"sqlite:///{tmp_path / 'fleet.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    s = Store.open(url)
    s.registry.register_kit(load_manifest(DEMO_KIT))
    yield s
    s.close()


def target(store, name: str, url: str, position: int, **kw):
    fields = dict(name=name, kind="webhook", url=url, audience="ops", kits=[], rules=[], min_severity="warning",
                  position=position, enabled=True, repeat_s=None, repeats=None)
    fields.update(kw)
    return store.notify.add_target(fields)


def notifier(store, metrics: NotifyMetrics | None = None, policy: Policy = POLICY, retries: int = 2,
             timeout_s: float = 2.0) -> Notifier:
    cfg = NotifyConfig(policy=policy, delivery=DeliveryConfig(timeout_s=timeout_s, retries=retries, backoff_s=1.0),
                       poll_s=0.05)
    return Notifier(store, cfg, Delivery(store, cfg.delivery, metrics=metrics or NotifyMetrics()))


def fire(store, now: int, rule: str = "paper_out", subject: str = "demo-printer", kit: str = "demo",
         severity: str = "critical") -> int:
    store.alerts.sync([Firing(subject, kit, rule, severity, f"{subject}: {rule}", {}, 1)], set(), now)
    return store.alerts.list(rule=rule, subject=subject, state="active")[0]["id"]


def fire_many(store, now: int, *alerts: tuple[str, str, str, str]) -> list[int]:
    """Several (rule, subject, kit, severity) firing at once (one evaluation: the others resolve)."""
    store.alerts.sync([Firing(subj, kit, rule, sev, f"{subj}: {rule}", {}, 1) for rule, subj, kit, sev in alerts],
                      set(), now)
    return [store.alerts.list(rule=rule, subject=subj, state="active")[0]["id"] for rule, subj, _k, _s in alerts]


def calm(store, now: int) -> None:
    store.alerts.sync([], set(), now)


def test_the_first_target_after_the_grace_then_its_repeats_then_the_next_then_back_to_normal_to_both(store, receivers):
    first, second = receivers(), receivers()
    target(store, "crew-phone", first.url, 0)
    target(store, "ops-pager", second.url, 1)
    n = notifier(store)
    t = now_ms()
    alert = fire(store, t)

    assert n.run_once(t + 60 * S) == 0 and first.received == []  # within the grace period
    assert n.run_once(t + 121 * S) == 1
    assert first.events() == [("opened", alert)] and second.received == []
    body = first.received[0]
    assert (body["target"], body["audience"], body["rule"], body["subject"], body["kit_id"], body["notification"]) == (
        "crew-phone", "ops", "paper_out", "demo-printer", "demo", 1)
    assert body["links"]["acknowledge"] == f"/api/v1/alerts/{alert}/acknowledge"

    assert n.run_once(t + 300 * S) == 0  # the repeat interval has not passed
    assert n.run_once(t + 721 * S) == 1
    assert first.events()[-1] == ("reminder", alert) and second.received == []  # its one repeat
    assert n.run_once(t + 1321 * S) == 1
    assert second.events() == [("escalated", alert)] and len(first.received) == 2  # after the repeat: the next
    assert second.received[0]["notification"] == 3
    assert n.run_once(t + 1921 * S) == 1
    assert second.events()[-1] == ("reminder", alert)  # the last target goes on being reminded
    assert len(first.received) == 2

    calm(store, t + 2000 * S)  # back to normal
    assert n.run_once(t + 2001 * S) == 2
    assert first.events()[-1] == ("resolved", alert) and second.events()[-1] == ("resolved", alert)
    assert first.received[-1]["state"] == "resolved" and first.received[-1]["resolved_by"] == "auto"
    assert n.run_once(t + 9000 * S) == 0  # told once
    history = store.alerts.get(alert)["history"]
    assert [h["what"] for h in history] == ["opened"] + ["notified"] * 4 + ["resolved"] + ["notified"] * 2
    assert history[1]["detail"] == "opened to crew-phone: HTTP 200" and history[1]["by"] == "webhook"
    assert history[3]["detail"] == "escalated to ops-pager: HTTP 200"
    assert [(s["event"], s["target"], s["state"]) for s in store.notify.sends(alert_id=alert)] == [
        ("resolved", "ops-pager", "sent"), ("resolved", "crew-phone", "sent"), ("reminder", "ops-pager", "sent"),
        ("escalated", "ops-pager", "sent"), ("reminder", "crew-phone", "sent"), ("opened", "crew-phone", "sent")]


def test_acknowledged_goes_no_further_and_back_to_normal_reaches_only_the_targets_told(store, receivers):
    a, b, c = receivers(), receivers(), receivers()
    target(store, "a", a.url, 0, repeats=0)  # its own count: escalate at the first repeat
    target(store, "b", b.url, 1)
    target(store, "c", c.url, 2)
    n = notifier(store)
    t = now_ms()
    alert = fire(store, t)
    n.run_once(t + 121 * S)
    n.run_once(t + 721 * S)
    assert a.events() == [("opened", alert)] and b.events() == [("escalated", alert)]
    assert store.alerts.acknowledge(alert, "ops-anna") == "done"
    assert n.run_once(t + 5000 * S) == 0 and n.run_once(t + 50_000 * S) == 0  # someone is on it: no escalation
    assert c.received == []
    calm(store, t + 60_000 * S)
    assert n.run_once(t + 60_001 * S) == 2
    assert a.events()[-1] == b.events()[-1] == ("resolved", alert)
    assert c.received == []  # never told, so not told it is over


def test_an_alert_resolved_within_the_grace_period_is_never_sent(store, receivers):
    r = receivers()
    target(store, "ops", r.url, 0)
    n = notifier(store)
    t = now_ms()
    fire(store, t)
    calm(store, t + 30 * S)
    assert n.run_once(t + 200 * S) == 0 and n.run_once(t + 2000 * S) == 0
    assert r.received == [] and store.notify.sends() == []


def test_targets_hear_only_of_their_kits_rules_and_severities(store, receivers):
    printers, crew_b, critical, everything = receivers(), receivers(), receivers(), receivers()
    target(store, "printers", printers.url, 0, rules=["paper_out"])
    target(store, "crew-b", crew_b.url, 0, audience="crew", kits=["kit-b"])
    target(store, "critical", critical.url, 0, min_severity="critical")
    target(store, "everything", everything.url, 0)
    n = notifier(store)
    t = now_ms()
    paper, soc_b = fire_many(store, t, ("paper_out", "demo-printer", "demo", "critical"),
                             ("low_soc", "b-power", "kit-b", "warning"))
    n.run_once(t + 121 * S)
    # Four targets at the same position: each alert's chain starts with the first that matches (by id).
    assert printers.events() == [("opened", paper)]
    assert crew_b.events() == [("opened", soc_b)]
    assert critical.received == [] and everything.received == []
    n.run_once(t + 721 * S)  # repeats: 1, so still the first targets
    n.run_once(t + 1321 * S)
    assert critical.events() == [("escalated", paper)]  # the warning never goes to the critical-only target
    assert everything.events() == [("escalated", soc_b)]
    assert [e for e, _ in crew_b.events()] == ["opened", "reminder"] and crew_b.received[0]["audience"] == "crew"


def test_a_failing_send_is_retried_with_backoff_then_delivered(store, receivers):
    r = receivers()
    r.statuses = [500, 503]
    target(store, "ops", r.url, 0)
    metrics = NotifyMetrics()
    n = notifier(store, metrics)
    t = now_ms()
    alert = fire(store, t)
    n.run_once(t + 121 * S)
    [send] = store.notify.sends()
    assert (send["state"], send["attempts"], send["reason"]) == ("pending", 1, "http_5xx")
    assert t + 121 * S + 500 <= send["next_try_ms"] <= t + 121 * S + 1500  # backoff 1 s, jitter x0.5..1.5
    n.run_once(t + 121 * S + 100)  # not yet due: not tried
    assert len(r.received) == 1
    n.run_once(t + 123 * S)
    assert store.notify.send(send["id"])["next_try_ms"] >= t + 123 * S + 1000  # doubled
    n.run_once(t + 130 * S)
    done = store.notify.send(send["id"])
    assert (done["state"], done["attempts"], done["outcome"]) == ("sent", 3, "HTTP 200 after 2 retries")
    assert len(r.received) == 3 and r.received[0] == r.received[2]
    assert metrics.failures[("ops", "http_5xx")] == 2 and metrics.sent["ops"] == 1 and not metrics.given_up
    assert store.alerts.get(alert)["history"][-1]["what"] == "notified"


def test_failures_are_counted_by_target_and_reason_and_never_hold_up_another_target(store, receivers):
    gone, refusing, ok = receivers(), receivers(), receivers()
    refusing.statuses = [404]
    dead_url = gone.url
    gone.close()  # nothing listens there any more: connection refused
    target(store, "gone", dead_url, 0, rules=["paper_out"])
    target(store, "refusing", refusing.url, 0, rules=["low_soc"])
    target(store, "ok", ok.url, 0, rules=["bms_protection"])
    metrics = NotifyMetrics()
    n = notifier(store, metrics, retries=1)
    t = now_ms()
    paper, soc, bms = fire_many(store, t, ("paper_out", "demo-printer", "demo", "critical"),
                                ("low_soc", "demo-power", "demo", "critical"),
                                ("bms_protection", "demo-power", "demo", "critical"))
    n.run_once(t + 121 * S)
    assert ok.events() == [("opened", bms)]  # delivered, whatever the others do
    assert len(refusing.received) == 1  # a 404 is not retried
    n.run_once(t + 200 * S)  # the refused connection's one retry
    by_alert = {s["alert_id"]: s for s in store.notify.sends()}
    assert (by_alert[paper]["state"], by_alert[paper]["reason"], by_alert[paper]["attempts"]) == ("failed", "connection", 2)
    assert (by_alert[soc]["state"], by_alert[soc]["reason"], by_alert[soc]["outcome"]) == ("failed", "http_4xx", "gave up: HTTP 404")
    assert by_alert[bms]["state"] == "sent"
    assert store.alerts.get(paper)["history"][-1]["what"] == "notify_failed"
    text = render_notify_metrics([t.name for t in store.notify.targets()], metrics)
    assert 'popkit_notification_failures_total{target="gone",reason="connection"} 2' in text
    assert 'popkit_notification_failures_total{target="refusing",reason="http_4xx"} 1' in text
    assert 'popkit_notification_failures_total{target="ok",reason="timeout"} 0' in text
    assert 'popkit_notification_sends_total{target="gone",outcome="failed"} 1' in text
    assert 'popkit_notification_sends_total{target="ok",outcome="sent"} 1' in text
    # A target that failed is tried again at its next repeat, and an alert told to no one is not "resolved" to it.
    n.run_once(t + 722 * S)
    n.run_once(t + 760 * S)  # and its retry
    assert [(s["event"], s["state"]) for s in store.notify.sends(alert_id=paper)] == [("reminder", "failed"),
                                                                                      ("opened", "failed")]
    calm(store, t + 800 * S)
    n.run_once(t + 801 * S)
    assert [s["event"] for s in store.notify.sends(alert_id=paper)] == ["reminder", "opened"]
    assert ok.events()[-1] == ("resolved", bms)


def test_a_hanging_target_holds_up_only_its_own_sends(store, receivers):
    hung, ok = receivers(), receivers()
    hung.hang = True
    target(store, "hung", hung.url, 0, rules=["paper_out"])
    target(store, "ok", ok.url, 0, rules=["low_soc"])
    n = notifier(store, policy=Policy(grace_s=0, repeat_s=600, repeats=1), timeout_s=20).start()
    try:
        fire(store, now_ms())
        wait_until(lambda: hung.received, what="the notifier to call the target that then hangs")
        _paper, soc = fire_many(store, now_ms(), ("paper_out", "demo-printer", "demo", "critical"),
                                ("low_soc", "demo-power", "demo", "critical"))
        n.wake()
        wait_until(lambda: ok.received, what="the other target's notification while the first hangs")
        assert ok.events() == [("opened", soc)] and not hung.release.is_set()
    finally:
        hung.release.set()
        n.stop()


def test_two_workers_send_each_step_once(store, receivers):
    r = receivers()
    target(store, "ops", r.url, 0)
    t = now_ms()
    fire(store, t)
    other = Store.open(str(store.engine.url))
    try:
        for at in (t + 121 * S, t + 721 * S):
            workers = [notifier(store), notifier(other)]
            threads = [threading.Thread(target=w.run_once, args=(at,)) for w in workers]
            for th in threads:
                th.start()
            for th in threads:
                th.join(10)
    finally:
        other.close()
    assert [e for e, _ in r.events()] == ["opened", "reminder"]


def test_a_send_to_a_deleted_target_fails_and_says_why(store, receivers):
    r = receivers()
    r.statuses = [500]
    tg = target(store, "ops", r.url, 0)
    n = notifier(store)
    t = now_ms()
    alert = fire(store, t)
    n.run_once(t + 121 * S)
    assert store.notify.delete_target(tg.id)
    n.run_once(t + 200 * S)
    [send] = store.notify.sends()
    assert (send["state"], send["outcome"], send["target"]) == ("failed", "gave up: the target was deleted after 2 attempts", "ops")
    assert store.alerts.get(alert)["history"][-1]["what"] == "notify_failed"


def test_the_old_webhook_setting_becomes_the_first_target_of_a_fleet_without_any(store, receivers):
    from fleet.settings import FleetSettings

    r = receivers()
    Notifier.from_settings(store, FleetSettings(alert_webhook_url=r.url))
    Notifier.from_settings(store, FleetSettings(alert_webhook_url=r.url + "/again"))  # one is enough
    [made] = store.notify.targets()
    assert (made.name, made.url, made.audience, made.kits, made.rules) == ("webhook", r.url, "ops", (), ())


# ------------------------------------------------------------ the API


def target_body(url: str, **kw) -> dict:
    body = dict(name="ops-pager", url=url, audience="ops", kits=[], rules=[], min_severity="warning", position=0,
                enabled=True, repeat_s=None, repeats=None, kind="webhook")
    body.update(kw)
    return body


def test_ops_create_change_test_and_delete_targets_and_set_the_policy(store, receivers):
    r = receivers()
    app = create_app(store)
    api = ops_client(app, "ops-anna")
    made = api.post("/api/v1/notify/targets", json=target_body(r.url, rules=["device_offline"]))
    assert made.status_code == 201, made.text
    tid = made.json()["id"]
    assert api.post("/api/v1/notify/targets", json=target_body(r.url)).status_code == 409
    for bad, says in ((dict(url="ftp://x.example/h"), "http:// or https://"),
                      (dict(name="crew", audience="crew"), "kits: a crew target names the kits it hears of"),
                      (dict(name="k", kits=["nowhere"]), "kits: no kit nowhere"),
                      (dict(name="r", rules=["no_such_rule"]), "rules")):
        resp = api.post("/api/v1/notify/targets", json={**target_body(r.url), **bad})
        assert resp.status_code == 422 and says in resp.text, (bad, resp.text)
    second = api.post("/api/v1/notify/targets", json=target_body(r.url, name="crew-demo", audience="crew",
                                                                 kits=["demo"], position=1)).json()
    assert [t["name"] for t in api.get("/api/v1/notify/targets").json()] == ["ops-pager", "crew-demo"]
    changed = api.put(f"/api/v1/notify/targets/{second['id']}", json=target_body(r.url, name="crew-demo", audience="crew",
                                                                                kits=["demo"], position=0, repeats=5))
    assert changed.status_code == 200 and changed.json()["repeats"] == 5
    assert api.put("/api/v1/notify/targets/999", json=target_body(r.url, name="x")).status_code == 404

    sent = api.post(f"/api/v1/notify/targets/{tid}/test")
    assert sent.status_code == 200, sent.text
    assert (sent.json()["event"], sent.json()["state"], sent.json()["outcome"]) == ("test", "sent", "HTTP 200")
    assert r.received[-1]["event"] == "test" and r.received[-1]["by"] == "ops-anna"
    r.statuses = [404]
    failed = api.post(f"/api/v1/notify/targets/{tid}/test").json()
    assert (failed["state"], failed["reason"], failed["outcome"]) == ("failed", "http_4xx", "gave up: HTTP 404")
    assert [s["state"] for s in api.get("/api/v1/notify/sends", params={"target": tid}).json()["items"]] == ["failed", "sent"]

    policy = api.get("/api/v1/notify/policy").json()
    assert policy["saved"] is False and policy["grace_s"] == 120
    assert api.put("/api/v1/notify/policy", json={"grace_s": 30, "repeat_s": 60, "repeats": 0}).json()["saved"] is True
    assert api.get("/api/v1/notify/policy").json() == {"grace_s": 30, "repeat_s": 60, "repeats": 0, "saved": True}
    assert api.put("/api/v1/notify/policy", json={"grace_s": 30, "repeat_s": 0, "repeats": 0}).status_code == 422

    assert api.delete(f"/api/v1/notify/targets/{tid}").status_code == 204
    assert api.delete(f"/api/v1/notify/targets/{tid}").status_code == 404
    assert api.get(f"/api/v1/notify/targets/{tid}").status_code == 404
    whats = [e["what"] for e in api.get("/api/v1/audit").json()]
    assert "POST /api/v1/notify/targets/{target_id}/test" in whats and "PUT /api/v1/notify/policy" in whats
    assert "DELETE /api/v1/notify/targets/{target_id}" in whats


def test_crew_and_venue_users_cannot_see_or_change_targets(store):
    app = create_app(store)
    for who in (client_as(app, "crew-a", "crew", kits=["demo"]), client_as(app, "venue-a", "venue", venues=["v1"])):
        assert who.get("/api/v1/notify/targets").status_code == 403
        assert who.post("/api/v1/notify/targets", json=target_body("http://127.0.0.1:9/x")).status_code == 403
        assert who.get("/api/v1/notify/sends").status_code == 403


def test_each_send_is_in_the_audit_log_and_failures_in_metrics(store, receivers):
    ok = receivers()
    target(store, "ops", ok.url, 0)
    target(store, "nobody", f"http://127.0.0.1:{free_port()}/x", 1)
    app = create_app(store)
    api = ops_client(app)
    n = notifier(store, policy=Policy(grace_s=0, repeat_s=600, repeats=0), retries=0)
    t = now_ms()
    alert = fire(store, t)
    n.run_once(t)
    n.run_once(t + 601 * S)
    rows = [e for e in api.get("/api/v1/audit").json() if e["what"].startswith("alert notif")]
    assert [(e["what"], e["by"], e["ref"]) for e in rows] == [("alert notify_failed", "webhook", str(alert)),
                                                              ("alert notified", "webhook", str(alert))]
    assert rows[0]["result"].startswith("paper_out: escalated to nobody: gave up: ConnectionRefusedError")
    metrics = api.get("/metrics").text
    assert 'popkit_notification_sends_total{target="ops",outcome="sent"}' in metrics
    assert 'popkit_notification_failures_total{target="nobody",reason="connection"}' in metrics


# ------------------------------------------------------------ email, through a local SMTP server


class Mailbox:
    """An SMTP server on 127.0.0.1 (aiosmtpd) keeping each message; refuses mail to ``refuse@...`` (550)."""

    def __init__(self):
        from aiosmtpd.controller import Controller

        self.messages: list = []
        box = self

        class Handler:
            async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802 - aiosmtpd's name
                if address.startswith("refuse@"):
                    return "550 5.1.1 no such mailbox"
                envelope.rcpt_tos.append(address)
                return "250 OK"

            async def handle_DATA(self, server, session, envelope):  # noqa: N802
                from email import message_from_bytes, policy

                box.messages.append(message_from_bytes(envelope.content, policy=policy.default))
                return "250 OK"

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def close(self):
        self.controller.stop()


@pytest.fixture
def mailbox():
    box = Mailbox()
    yield box
    box.close()


def email_notifier(store, box: Mailbox) -> Notifier:
    from fleet.notify.email import SmtpConfig

    smtp = SmtpConfig(host="127.0.0.1", port=box.port, sender="fleet@popkit.test", tls="none")
    cfg = NotifyConfig(policy=POLICY, delivery=DeliveryConfig(timeout_s=5, retries=1, backoff_s=1.0, smtp=smtp))
    return Notifier(store, cfg, Delivery(store, cfg.delivery, metrics=NotifyMetrics()))


def test_an_email_target_gets_the_alert_and_its_end_by_mail(store, mailbox, receivers):
    target(store, "crew-mail", "mailto:crew@popkit.test", 0, kind="email", repeats=0)
    hook = receivers()
    target(store, "ops-pager", hook.url, 1)
    n = email_notifier(store, mailbox)
    t = now_ms()
    alert = fire(store, t)
    n.run_once(t + 121 * S)
    [msg] = mailbox.messages
    assert (msg["To"], msg["From"]) == ("crew@popkit.test", "fleet@popkit.test")
    assert msg["Subject"] == "[PopKit] opened: critical paper_out: demo-printer: paper_out"
    text = msg.get_content()
    assert f"/api/v1/alerts/{alert}/acknowledge" in text and '"target": "crew-mail"' in text
    n.run_once(t + 721 * S)  # no repeats here: on to the webhook
    assert hook.events() == [("escalated", alert)] and len(mailbox.messages) == 1
    calm(store, t + 800 * S)
    n.run_once(t + 801 * S)
    assert mailbox.messages[-1]["Subject"].startswith("[PopKit] resolved: ")
    assert [s["outcome"] for s in store.notify.sends(target_id=store.notify.targets()[0].id)] == ["SMTP 250", "SMTP 250"]


def test_a_refused_mailbox_fails_at_once_and_is_counted(store, mailbox):
    target(store, "nobody", "mailto:refuse@popkit.test", 0, kind="email")
    n = email_notifier(store, mailbox)
    t = now_ms()
    fire(store, t)
    n.run_once(t + 121 * S)
    [send] = store.notify.sends()
    assert (send["state"], send["reason"], send["attempts"]) == ("failed", "smtp_5xx", 1)
    assert send["outcome"].startswith("gave up: SMTP 550 5.1.1 no such mailbox")
    assert n.delivery.metrics.failures[("nobody", "smtp_5xx")] == 1 and mailbox.messages == []


def test_an_email_target_needs_a_mailto_address_and_the_fleet_an_smtp_server(store):
    api = ops_client(create_app(store))
    bad = api.post("/api/v1/notify/targets", json=target_body("https://hooks.example.com/x", kind="email"))
    assert bad.status_code == 422 and "mailto:name@example.com" in bad.text
    made = api.post("/api/v1/notify/targets", json=target_body("mailto:ops@popkit.test", kind="email"))
    assert made.status_code == 201, made.text
    sent = api.post(f"/api/v1/notify/targets/{made.json()['id']}/test").json()  # this fleet has no SMTP server set
    assert (sent["state"], sent["outcome"]) == ("failed", "gave up: no SMTP server set (POPKIT_NOTIFY_SMTP_HOST)")
