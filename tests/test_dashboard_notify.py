"""The ops Notifications page (fleet/api/static/notify.js, docs/alerts.md "Notifications") in a real headless
Chromium, against a real fleet (store, ingest on a real Mosquitto, the API under uvicorn: tests/test_dashboard.py's
``live`` and ``browser``) running its alert evaluator and notifier threads as ``popkit fleet serve`` does, with
short grace and repeat settings:

ops set up two targets (real HTTP receivers on 127.0.0.1) and the escalation policy on the page; a real device
stops reporting (its process killed: the broker publishes its Last Will); its alert reaches the first target
after the grace period and the second after the first's repeats, and the page lists each send; the device
comes back and back to normal reaches both. Screenshots go to test-artifacts/notify-<step>.png."""

from __future__ import annotations

import pytest

from fleet.alerts import AlertConfig, Evaluator
from fleet.alerts.notify import Notifier, NotifyConfig
from fleet.notify.delivery import DeliveryConfig
from tests import test_dashboard as dash
from tests.conftest import wait_until
from tests.test_dashboard import ARTIFACTS, DOOMED, KIT, bring_up, start_doomed_device
from tests.test_dashboard_a11y import BLOCKING, describe, run_axe
from tests.test_notify_targets import Receiver

# The dashboard suite's fixtures: the fleet under uvicorn with an ops user, and Chromium signed in as them.
live, browser = dash.live, dash.browser

WAIT_MS = 15_000
GRACE_S, REPEAT_S, REPEATS = 2, 2, 1


@pytest.fixture
def alerting(live):
    """The fleet's evaluator (a device offline alerts after 1 s) and notifier threads, polling often."""
    evaluator = Evaluator(live.store, AlertConfig(offline_grace_s=1), interval_s=0.5, min_interval_s=0.2,
                          changes=lambda: live.ingest.metrics.batches).start()
    notifier = Notifier(live.store, NotifyConfig(delivery=DeliveryConfig(timeout_s=2, retries=2, backoff_s=0.2),
                                                 poll_s=0.2)).start()
    yield notifier
    evaluator.stop()
    notifier.stop()


@pytest.fixture
def receivers():
    made = [Receiver(), Receiver()]
    yield made
    for r in made:
        r.close()


def offline_alerts(receiver: Receiver) -> list[dict]:
    return [b for b in receiver.received if b.get("rule") == "device_offline" and b.get("subject") == DOOMED]


def add_target(page, name: str, url: str, position: int, audience: str, kits: str = "", rules=(), severity="warning"):
    form = page.locator('[data-testid="notify-target-form"]')
    form.get_by_label("Name", exact=True).fill(name)
    form.get_by_label("Address", exact=True).fill(url)
    form.get_by_label("Order", exact=True).fill(str(position))
    form.get_by_label("Audience").select_option(audience)
    form.get_by_label("Kits", exact=True).fill(kits)
    form.get_by_label("Rules").select_option(list(rules))
    form.get_by_label("Least severity").select_option(severity)
    form.locator('[data-testid="notify-target-save"]').click()
    page.locator(f'[data-testid="notify-target-{name}"]').wait_for(timeout=WAIT_MS)


def test_ops_set_up_two_targets_and_an_offline_devices_alert_escalates_from_the_first_to_the_second(
        live, broker, browser, alerting, receivers):
    crew_hook, ops_hook = receivers
    pub = bring_up(broker.url, skip=(DOOMED,))
    doomed = start_doomed_device(broker.url)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        wait_until(lambda: live.get(f"/api/v1/kits/{KIT}").json()["devices_online"] == 5, what="the demo kit online")
        page.goto(f"{live.base}/#/ops/notify")
        page.locator('[data-testid="ops-nav-notify"][aria-current="page"]').wait_for(timeout=WAIT_MS)
        status = page.locator('[data-testid="notify-status"]')

        # The policy: the settings' until saved.
        policy = page.locator('[data-testid="notify-policy-form"]')
        wait_until(lambda: "Not saved yet" in page.locator('[data-testid="notify-policy-status"]').inner_text(),
                   5, what="the policy's defaults on the page")
        policy.get_by_label("Grace period (seconds)").fill(str(GRACE_S))
        policy.get_by_label("Repeat every (seconds)").fill(str(REPEAT_S))
        policy.get_by_label("Repeats before the next target").fill(str(REPEATS))
        policy.locator('[data-testid="notify-policy-save"]').click()
        wait_until(lambda: page.locator('[data-testid="notify-policy-status"]').inner_text().startswith("Saved"),
                   5, what="the policy saved")
        assert live.get("/api/v1/notify/policy").json() == {"grace_s": GRACE_S, "repeat_s": REPEAT_S,
                                                            "repeats": REPEATS, "saved": True}

        # A crew target without its kits is refused with the fleet's reason, as text.
        add = page.locator('[data-testid="notify-target-form"]')
        add.get_by_label("Name", exact=True).fill("crew-phone")
        add.get_by_label("Address", exact=True).fill(crew_hook.url)
        add.get_by_label("Audience").select_option("crew")
        add.locator('[data-testid="notify-target-save"]').click()
        wait_until(lambda: "a crew target names the kits it hears of" in status.inner_text(), 5,
                   what="the refusal on the page")
        assert status.get_attribute("data-ok") == "false" and "[object Object]" not in status.inner_text()

        # Two targets: the kit's crew first (offline devices only), then the ops pager (critical alerts of every kit).
        add_target(page, "crew-phone", crew_hook.url, 0, "crew", kits=KIT, rules=["device_offline"])
        add_target(page, "ops-pager", ops_hook.url, 1, "ops", severity="critical")
        assert [t["name"] for t in live.get("/api/v1/notify/targets").json()] == ["crew-phone", "ops-pager"]
        row = page.locator('[data-testid="notify-target-crew-phone"]').inner_text()
        assert KIT in row and "device_offline" in row and "crew" in row

        # A test send from the page reaches the receiver, and its outcome shows.
        page.locator('[data-testid="notify-test-ops-pager"]').click()
        wait_until(lambda: "Test sent to ops-pager: HTTP 200" in status.inner_text(), 10, what="the test's outcome")
        assert [b["event"] for b in ops_hook.received] == ["test"] and ops_hook.received[0]["by"] == live.user
        page.screenshot(path=str(ARTIFACTS / "notify-setup.png"), full_page=True)

        # The device stops reporting: its process is killed, the broker publishes its Will.
        doomed.kill()
        doomed.wait(10)
        wait_until(lambda: offline_alerts(crew_hook), 30, what="the offline alert at the first target")
        [alert] = [a for a in live.get("/api/v1/alerts?rule=device_offline&state=open").json()["items"]
                   if a["subject"] == DOOMED]
        first = offline_alerts(crew_hook)[0]
        assert (first["event"], first["id"], first["target"], first["audience"]) == ("opened", alert["id"], "crew-phone", "crew")
        assert first["sent_ms"] - alert["first_seen_ms"] >= GRACE_S * 1000  # not before the grace period
        assert offline_alerts(ops_hook) == []
        page.locator(f'[data-testid^="notify-send-"][data-alert="{alert["id"]}"][data-event="opened"]'
                     f'[data-target="crew-phone"][data-state="sent"]').wait_for(timeout=WAIT_MS)

        # Unacknowledged: its repeat to the first target, then the second target.
        wait_until(lambda: offline_alerts(ops_hook), 30, what="the alert escalated to the second target")
        assert [b["event"] for b in offline_alerts(crew_hook)] == ["opened"] + ["reminder"] * REPEATS
        escalated = offline_alerts(ops_hook)[0]
        assert (escalated["event"], escalated["id"], escalated["target"]) == ("escalated", alert["id"], "ops-pager")
        assert escalated["sent_ms"] - offline_alerts(crew_hook)[-1]["sent_ms"] >= REPEAT_S * 1000
        page.locator(f'[data-testid^="notify-send-"][data-alert="{alert["id"]}"][data-event="escalated"]'
                     f'[data-target="ops-pager"][data-state="sent"]').wait_for(timeout=WAIT_MS)
        page.screenshot(path=str(ARTIFACTS / "notify-escalated.png"), full_page=True)

        # Back to normal (the device up again): both targets told, once.
        doomed = start_doomed_device(broker.url)
        for hook in (crew_hook, ops_hook):
            wait_until(lambda h=hook: offline_alerts(h)[-1]["event"] == "resolved", 30, what="back to normal at both targets")
        for hook in (crew_hook, ops_hook):
            assert [b["event"] for b in offline_alerts(hook)].count("resolved") == 1
        for target in ("crew-phone", "ops-pager"):
            page.locator(f'[data-testid^="notify-send-"][data-alert="{alert["id"]}"][data-event="resolved"]'
                         f'[data-target="{target}"][data-state="sent"]').wait_for(timeout=WAIT_MS)
        page.screenshot(path=str(ARTIFACTS / "notify-resolved.png"), full_page=True)
        blocking = [v for v in run_axe(page) if v["impact"] in BLOCKING]  # the page with its data drawn
        assert not blocking, describe(blocking)

        # Every send is in the audit log, by "webhook".
        sent = [e for e in live.get("/api/v1/audit").json() if e["what"] == "alert notified" and e["ref"] == str(alert["id"])]
        assert len(sent) == len(offline_alerts(crew_hook)) + len(offline_alerts(ops_hook))
        assert {e["by"] for e in sent} == {"webhook"}

        # Delete a target from the page (after a confirm).
        page.once("dialog", lambda d: d.accept())
        page.locator('[data-testid="notify-delete-ops-pager"]').click()
        page.locator('[data-testid="notify-target-ops-pager"]').wait_for(state="detached", timeout=WAIT_MS)
        assert [t["name"] for t in live.get("/api/v1/notify/targets").json()] == ["crew-phone"]
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "the page scrolls sideways"
        assert not errors, errors
    finally:
        page.context.close()
        doomed.kill()
        doomed.wait(10)
        pub.loop_stop()
        pub.disconnect()
