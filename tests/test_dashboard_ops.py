"""The ops pages of the dashboard (fleet/api/static/ops.js, docs/ops.md) in a real headless Chromium,
against a real fleet (store, ingest on a real Mosquitto, the API under uvicorn; tests/test_dashboard.py's
``live`` and ``browser``), each job done as ops do it:

- add a user: their generated password shown once, it signs them in, and the audit log's row for it;
- disable a user: they can no longer sign in, and their session ends;
- alerts across the fleet filtered by rule, kit, state and severity, and acknowledged in bulk;
- register a kit from its manifest (and a bad one answered with the fleet's reason);
- dead letters grouped by reason, and the latest of one reason.

Plus the routes under them (bulk acknowledge, the generated password, the audit's filters, the reasons).
Screenshots go to test-artifacts/ops-<page>.png."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from fleet.alerts import AlertConfig, evaluate
from fleet.auth.passwords import hash_password, new_password
from fleet.auth.testing import token_as
from kits.contract import Command, PrinterTelemetry, encode, topic
from kits.manifest import load_manifest
from tests.conftest import DEMO_KIT, REPO, wait_until
from tests import test_dashboard as dash
from tests.test_dashboard import ARTIFACTS, KIT, bring_up, now_ms

# The dashboard suite's fixtures: the fleet under uvicorn with an ops user, and Chromium signed in as them.
live, browser = dash.live, dash.browser

WAIT_MS = 10_000


def ops_page(browser, live, sub: str):
    """A desktop page signed in as ops on #/ops/<sub>, and the script errors it raises."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{live.base}/#/ops/{sub}")
    page.locator(f'[data-testid="ops-nav-{sub}"][aria-current="page"]').wait_for(timeout=WAIT_MS)
    return page, errors


def no_overflow(page) -> None:
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "the page scrolls sideways"


def sign_in(live, name: str, password: str) -> httpx.Response:
    return httpx.post(f"{live.base}/api/v1/auth/token", data={"username": name, "password": password}, timeout=10)


# ---------------------------------------------------------------- users and the audit log

def test_ops_add_a_user_see_the_password_once_and_the_audit_row(live, browser):
    page, errors = ops_page(browser, live, "users")
    page.locator(f'[data-testid="ops-user-{live.user}"]').wait_for(timeout=WAIT_MS)
    form = page.locator('[data-testid="ops-user-form"]')
    form.get_by_label("Name").fill("crew-nina")
    form.get_by_label("Role").select_option("crew")
    form.get_by_label("Kits (crew)").fill(KIT)
    form.locator('[data-testid="ops-user-save"]').click()
    secret = page.locator('[data-testid="ops-secret-value"]')
    secret.wait_for(timeout=WAIT_MS)
    password = secret.inner_text().strip()
    page.locator('[data-testid="ops-user-crew-nina"]').wait_for(timeout=WAIT_MS)
    page.screenshot(path=str(ARTIFACTS / "ops-users.png"), full_page=True)

    user = live.get("/api/v1/users/crew-nina").json()
    assert (user["role"], user["kits"], user["has_password"], user["disabled"]) == ("crew", [KIT], True, False)
    assert password not in json.dumps(user)
    assert sign_in(live, "crew-nina", password).status_code == 200  # the password shown is the one set
    # Shown once: "done" takes it off the page, and nothing on the page lists it again.
    page.locator('[data-testid="ops-secret-done"]').click()
    page.locator('[data-testid="ops-secret"]').wait_for(state="hidden", timeout=WAIT_MS)
    assert password not in page.content()

    page.locator('[data-testid="ops-nav-audit"]').click()
    filt = page.locator('[data-testid="ops-audit-filter"]')
    filt.get_by_label("Who").fill(live.user)
    filt.get_by_label("Action").fill("users")
    filt.locator('button[type="submit"]').click()
    row = page.locator('[data-testid="ops-audit-row"]', has_text="/api/v1/users/crew-nina/password")
    row.wait_for(timeout=WAIT_MS)
    rows = page.locator('[data-testid="ops-audit-row"]')
    texts = [rows.nth(i).inner_text() for i in range(rows.count())]
    assert any("PUT /api/v1/users/{name}" in t and "/api/v1/users/crew-nina" in t for t in texts), texts
    assert all(live.user in t for t in texts), texts  # the "who" filter held
    assert password not in page.content()
    page.screenshot(path=str(ARTIFACTS / "ops-audit.png"), full_page=True)
    no_overflow(page)
    assert not errors, errors


def test_ops_disable_a_user_who_then_cannot_sign_in(live, browser):
    password = new_password()
    live.app.state.auth.users.put("crew-otto", "crew", kits=[KIT], password_hash=hash_password(password))
    token = sign_in(live, "crew-otto", password).json()["access_token"]
    me = lambda: httpx.get(f"{live.base}/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"}, timeout=5)  # noqa: E731
    assert me().status_code == 200

    page, errors = ops_page(browser, live, "users")
    row = page.locator('[data-testid="ops-user-crew-otto"]')
    row.wait_for(timeout=WAIT_MS)
    # ops cannot disable themselves: their own row offers no such button
    assert page.locator(f'[data-testid="ops-user-{live.user}"] button', has_text="disable").count() == 0
    row.get_by_role("button", name="disable crew-otto").click()
    page.locator('[data-testid="ops-user-crew-otto"][data-disabled="true"]').wait_for(timeout=WAIT_MS)
    assert "cannot sign in" in page.locator('[data-testid="ops-user-status"]').inner_text()
    page.screenshot(path=str(ARTIFACTS / "ops-users-disabled.png"), full_page=True)

    assert sign_in(live, "crew-otto", password).status_code == 401
    assert me().status_code == 401  # the session they had ended too
    assert live.get("/api/v1/users/crew-otto").json()["kits"] == [KIT]  # disabled, scope kept
    assert not errors, errors


def test_ops_change_a_users_scope(live, browser):
    live.app.state.auth.users.put("crew-pia", "crew", kits=["old-kit"])
    page, errors = ops_page(browser, live, "users")
    page.get_by_role("button", name="change crew-pia's role or scope").click()
    form = page.locator('[data-testid="ops-user-form"]')
    assert form.get_by_label("Name").input_value() == "crew-pia"
    form.get_by_label("Kits (crew)").fill(f"{KIT}, night-market")
    form.locator('[data-testid="ops-user-save"]').click()
    page.locator('[data-testid="ops-user-crew-pia"]', has_text="night-market").wait_for(timeout=WAIT_MS)
    assert live.get("/api/v1/users/crew-pia").json()["kits"] == [KIT, "night-market"]
    assert page.locator('[data-testid="ops-secret"]').is_hidden()  # a change gives no password
    assert not errors, errors


def test_ops_enable_a_user_and_give_them_a_new_password_with_the_keyboard_alone(live, browser):
    old = new_password()
    live.app.state.auth.users.put("crew-kai", "crew", kits=[KIT], password_hash=hash_password(old), disabled=True)
    assert sign_in(live, "crew-kai", old).status_code == 401
    page, errors = ops_page(browser, live, "users")
    page.get_by_role("button", name="enable crew-kai").focus()
    page.keyboard.press("Enter")
    page.locator('[data-testid="ops-user-crew-kai"][data-disabled="false"]').wait_for(timeout=WAIT_MS)
    assert sign_in(live, "crew-kai", old).status_code == 200  # enabled with the password they had

    asked: list[str] = []
    page.once("dialog", lambda d: (asked.append(d.message), d.accept()))
    page.get_by_role("button", name="new password for crew-kai").focus()
    page.keyboard.press("Enter")
    secret = page.locator('[data-testid="ops-secret-value"]')
    secret.wait_for(timeout=WAIT_MS)
    assert asked and "crew-kai" in asked[0]
    # The box takes the focus, so "done" is one Enter away.
    assert page.evaluate("document.activeElement.dataset.testid") == "ops-secret-done"
    fresh = secret.inner_text().strip()
    assert sign_in(live, "crew-kai", old).status_code == 401
    assert sign_in(live, "crew-kai", fresh).status_code == 200
    page.keyboard.press("Enter")
    page.locator('[data-testid="ops-secret"]').wait_for(state="hidden", timeout=WAIT_MS)
    assert fresh not in page.content()
    assert not errors, errors


# ---------------------------------------------------------------- alerts

def raise_alerts(live, broker) -> list[dict]:
    """The demo kit's printer out of paper, and, an hour on, its devices silent: critical alerts all."""
    pub = bring_up(broker.url)
    try:
        wait_until(lambda: live.get(f"/api/v1/kits/{KIT}").json()["devices_online"] == 5, what="the kit online")
        pub.publish(topic(KIT, "demo-printer", "telemetry"),
                    encode(PrinterTelemetry(boot="d00d01", seq=1, ts=now_ms(), online=True, paper="out")), qos=1)
        wait_until(lambda: any(d["id"] == "demo-printer" and d["health"]["status"] == "degraded"
                               for d in live.get(f"/api/v1/kits/{KIT}").json()["devices"]), what="paper out at the fleet")
    finally:
        pub.disconnect()
        pub.loop_stop()
    evaluate(live.store, now_ms(), AlertConfig())
    evaluate(live.store, now_ms() + 3_600_000, AlertConfig())
    return live.get("/api/v1/alerts?limit=500").json()["items"]


def test_ops_filter_the_fleets_alerts_and_acknowledge_them_in_bulk(live, broker, browser):
    alerts = raise_alerts(live, broker)
    offline = sorted(a["id"] for a in alerts if a["rule"] == "device_offline")
    [paper] = [a["id"] for a in alerts if a["rule"] == "paper_out"]
    assert len(offline) >= 2, alerts

    page, errors = ops_page(browser, live, "alerts")
    for a in offline + [paper]:
        page.locator(f'[data-testid="ops-alert-{a}"]').wait_for(timeout=WAIT_MS)
    filt = page.locator('[data-testid="ops-alert-filter"]')
    # severity: every one of these is critical (offline, out of paper), so none is a warning
    filt.get_by_label("Severity").select_option("warning")
    page.locator('[data-testid="ops-alert-status"]', has_text="no alert matches").wait_for(timeout=WAIT_MS)
    filt.get_by_label("Severity").select_option("critical")
    page.locator(f'[data-testid="ops-alert-{paper}"]').wait_for(timeout=WAIT_MS)
    filt.get_by_label("Severity").select_option("")
    # rule
    filt.get_by_label("Rule").select_option("device_offline")
    page.locator(f'[data-testid="ops-alert-{paper}"]').wait_for(state="detached", timeout=WAIT_MS)
    rows = page.locator('[data-testid^="ops-alert-"][data-rule]')
    assert sorted(int(rows.nth(i).get_attribute("data-testid").rsplit("-", 1)[1]) for i in range(rows.count())) == offline
    # kit: another kit has none of them
    filt.get_by_label("Kit", exact=True).fill("night-market")
    filt.locator('button[type="submit"]').click()
    page.locator('[data-testid="ops-alert-status"]', has_text="no alert matches").wait_for(timeout=WAIT_MS)
    filt.get_by_label("Kit", exact=True).fill(KIT)
    filt.locator('button[type="submit"]').click()
    page.locator(f'[data-testid="ops-alert-{offline[0]}"]').wait_for(timeout=WAIT_MS)
    page.screenshot(path=str(ARTIFACTS / "ops-alerts.png"), full_page=True)

    # bulk acknowledge every offline one shown, with a note
    page.get_by_label("select every alert shown").check()
    page.locator('[data-testid="ops-ack-form"]').get_by_label("Note").fill("van on its way")
    page.locator('[data-testid="ops-ack-selected"]').click()
    page.locator('[data-testid="ops-ack-status"]', has_text=f"{len(offline)} acknowledged").wait_for(timeout=WAIT_MS)
    for a in offline:
        page.locator(f'[data-testid="ops-alert-{a}"][data-state="acknowledged"]').wait_for(timeout=WAIT_MS)
        got = live.get(f"/api/v1/alerts/{a}").json()
        assert got["acknowledged_by"] == live.user and got["history"][-1]["detail"] == "van on its way"
    assert live.get(f"/api/v1/alerts/{paper}").json()["state"] == "open"  # not selected: untouched
    # state: the open ones now hold none of the acknowledged
    filt.get_by_label("State").select_option("open")
    page.locator('[data-testid="ops-alert-status"]', has_text="no alert matches").wait_for(timeout=WAIT_MS)
    page.screenshot(path=str(ARTIFACTS / "ops-alerts-acknowledged.png"), full_page=True)
    no_overflow(page)
    assert not errors, errors


def test_bulk_acknowledge_says_what_happened_to_each_and_keeps_crew_to_their_kits(live, broker):
    alerts = raise_alerts(live, broker)
    first, second = sorted(a["id"] for a in alerts if a["rule"] == "device_offline")[:2]
    live.store.alerts.resolve(second, "someone")
    ops = {"Authorization": f"Bearer {live.token}"}
    r = httpx.post(f"{live.base}/api/v1/alerts/acknowledge", headers=ops, json={"ids": [first, second, 99999, first]})
    assert r.status_code == 200, r.text
    assert r.json()["items"] == [{"id": first, "outcome": "done"}, {"id": second, "outcome": "resolved"},
                                 {"id": 99999, "outcome": "missing"}]
    again = httpx.post(f"{live.base}/api/v1/alerts/acknowledge", headers=ops, json={"ids": [first]})
    assert again.json()["items"] == [{"id": first, "outcome": "already"}]
    # One audit entry per acknowledged alert (its own record), not one more for the bulk request.
    audit = live.get("/api/v1/audit?action=alert").json()
    assert [(a["what"], a["ref"]) for a in audit if a["by"] == live.user] == [("alert acknowledged", str(first))]
    assert not live.get("/api/v1/audit?action=/alerts/acknowledge").json()
    # A crew user of another kit: the demo kit's alert is as missing as one that does not exist.
    other = {"Authorization": f"Bearer {token_as(live.app, 'crew-else', 'crew', kits=['night-market'])}"}
    [third] = [a["id"] for a in alerts if a["rule"] == "paper_out"]
    r = httpx.post(f"{live.base}/api/v1/alerts/acknowledge", headers=other, json={"ids": [third]})
    assert r.json()["items"] == [{"id": third, "outcome": "missing"}]
    assert live.get(f"/api/v1/alerts/{third}").json()["state"] == "open"
    assert httpx.post(f"{live.base}/api/v1/alerts/acknowledge", headers=ops, json={"ids": []}).status_code == 422


# ---------------------------------------------------------------- the audit log's filters (API)

def test_the_audit_log_filters_by_who_action_kit_and_time(live):
    ops = {"Authorization": f"Bearer {live.token}"}
    other = {"Authorization": f"Bearer {token_as(live.app, 'ops-two', 'ops')}"}
    kit_toml = (REPO / "kits" / "examples" / "listening-room.toml").read_text()
    before = now_ms()
    assert httpx.put(f"{live.base}/api/v1/users/crew-a", headers=ops, json={"role": "crew"}).status_code == 200
    time.sleep(0.01)  # the next entry a later millisecond than the first: "since" between them
    middle = now_ms()
    r = httpx.put(f"{live.base}/api/v1/kits/listening-room", headers={**other, "Content-Type": "text/plain"}, content=kit_toml)
    assert r.status_code == 200, r.text

    def what(**q) -> list[tuple[str, str]]:
        got = httpx.get(f"{live.base}/api/v1/audit", headers=ops, params={"since": before, **q})
        assert got.status_code == 200, got.text
        return [(a["by"], a["what"]) for a in got.json()]

    assert what() == [("ops-two", "PUT /api/v1/kits/{kit_id}"), (live.user, "PUT /api/v1/users/{name}")]
    assert what(by="ops-two") == [("ops-two", "PUT /api/v1/kits/{kit_id}")]
    assert what(action="put /API/v1/users") == [(live.user, "PUT /api/v1/users/{name}")]  # case-insensitive
    assert what(action="%") == []  # a wildcard is a character like any other
    assert what(kit="listening-room") == [("ops-two", "PUT /api/v1/kits/{kit_id}")]
    assert what(since=middle) == [("ops-two", "PUT /api/v1/kits/{kit_id}")]
    assert what(before=middle) == [(live.user, "PUT /api/v1/users/{name}")]
    for bad in ({"by": ""}, {"action": "a\x00b"}, {"kit": "demo\n"}):
        assert httpx.get(f"{live.base}/api/v1/audit", headers=ops, params=bad).status_code == 422, bad


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    from fleet.store import Store

    url = f"sqlite:///{tmp_path / 'fleet.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    s = Store.open(url)
    s.registry.register_kit(load_manifest(DEMO_KIT))
    yield s
    s.close()


def test_audit_filters_and_dead_letter_reasons_hold_on_sqlite_and_postgresql(store):
    """The filters are SQL (LIKE with its escape, concatenation, subqueries): the same answers on both."""
    from fleet.auth.audit import ApiAudit
    from fleet.ledger import Batch, RejectedMessage

    audit = ApiAudit(store.engine)
    audit.record("olga", "PUT", "/api/v1/users/{name}", "/api/v1/users/a_b", 200, ts_ms=1000)
    audit.record("olga", "PUT", "/api/v1/kits/{kit_id}", f"/api/v1/kits/{KIT}", 200, kit_id=KIT, ts_ms=2000)
    audit.record("ivan", "DELETE", "/api/v1/users/{name}", "/api/v1/users/x", 204, ts_ms=3000)
    store.commands.add("demo-scanner-1", Command(id="c0ffee01", ts=2500, expires=now_ms() + 60_000, action="identify"),
                       requested_by="ivan")
    what = lambda **kw: [(a["by"], a["what"]) for a in store.activity.audit(100, **kw)]  # noqa: E731
    assert what(action="USERS") == [("ivan", "DELETE /api/v1/users/{name}"), ("olga", "PUT /api/v1/users/{name}")]
    assert what(action="command ident") == [("ivan", "command identify")]
    assert what(action="us_rs") == [] and what(action="%") == []  # wildcards are characters
    assert what(by="olga", kit=KIT) == [("olga", "PUT /api/v1/kits/{kit_id}")]
    assert what(kit=KIT) == [("ivan", "command identify"), ("olga", "PUT /api/v1/kits/{kit_id}")]
    assert what(since_ms=2000, before_ms=3000) == [("ivan", "command identify"), ("olga", "PUT /api/v1/kits/{kit_id}")]

    store.ledger.write_batch(Batch(rejected=[
        RejectedMessage("popkit/v1/demo/demo-agent/telemetry", b"{no", "bad_json", "Expecting value"),
        RejectedMessage("popkit/v1/demo/ghost/state", b"{}", "unknown_device", "no device 'ghost'"),
        RejectedMessage("popkit/v1/demo/demo-agent/state", b"{no", "bad_json", "Expecting value")]))
    reasons = store.ledger.dead_letter_reasons()
    assert [(r["reason"], r["count"]) for r in reasons] == [("bad_json", 2), ("unknown_device", 1)]
    newest = store.ledger.dead_letters(1, reason="bad_json")[0]
    assert reasons[0]["last_id"] == newest["id"] and reasons[0]["last_ms"] == newest["received_ms"]


# ---------------------------------------------------------------- kits

def test_ops_register_a_kit_from_its_manifest(live, browser):
    page, errors = ops_page(browser, live, "kits")
    page.locator(f'[data-testid="ops-kit-{KIT}"]').wait_for(timeout=WAIT_MS)
    form = page.locator('[data-testid="ops-kit-form"]')
    # A manifest the fleet refuses: its reason, as text
    form.get_by_label("Manifest (TOML)").fill('id = "broken"\nname = 3\n')
    form.locator('[data-testid="ops-kit-register"]').click()
    status = page.locator('[data-testid="ops-kit-status"][data-ok="false"]')
    status.wait_for(timeout=WAIT_MS)
    assert "name" in status.inner_text()
    assert live.get("/api/v1/kits/broken").status_code == 404
    # The real one, from its file
    form.get_by_label("Manifest file").set_input_files(str(REPO / "kits" / "examples" / "listening-room.toml"))
    wait_until(lambda: 'id = "listening-room"' in form.get_by_label("Manifest (TOML)").input_value(), what="the file read")
    form.locator('[data-testid="ops-kit-register"]').click()
    page.locator('[data-testid="ops-kit-status"][data-ok="true"]', has_text="listening-room").wait_for(timeout=WAIT_MS)
    page.locator('[data-testid="ops-kit-listening-room"]').wait_for(timeout=WAIT_MS)
    kit = live.get("/api/v1/kits/listening-room").json()
    assert {"lr-door", "lr-printer", "lr-power"} <= {d["id"] for d in kit["devices"]}
    page.screenshot(path=str(ARTIFACTS / "ops-kits.png"), full_page=True)
    no_overflow(page)
    assert not errors, errors


# ---------------------------------------------------------------- dead letters

def test_ops_see_dead_letters_grouped_by_reason(live, broker, browser):
    from tests.conftest import publisher

    pub = publisher(broker.url)
    try:
        for _ in range(3):
            pub.publish(topic(KIT, "demo-agent", "telemetry"), b"{not json", qos=1).wait_for_publish(5)
        pub.publish(topic(KIT, "ghost-device", "telemetry"), encode(PrinterTelemetry(
            boot="d00d01", seq=1, ts=now_ms(), online=True, paper="ok")), qos=1).wait_for_publish(5)
    finally:
        pub.disconnect()
        pub.loop_stop()
    ops = {"Authorization": f"Bearer {live.token}"}

    def reasons() -> dict[str, int]:
        return {r["reason"]: r["count"] for r in httpx.get(f"{live.base}/api/v1/dead-letters/reasons", headers=ops).json()}

    wait_until(lambda: reasons() == {"bad_json": 3, "unknown_device": 1}, what="the dead letters at the fleet")
    page, errors = ops_page(browser, live, "dead-letters")
    bad = page.locator('[data-testid="ops-reason-bad_json"]')
    bad.wait_for(timeout=WAIT_MS)
    assert bad.get_attribute("data-count") == "3"
    assert page.locator('[data-testid="ops-reason-unknown_device"]').get_attribute("data-count") == "1"
    order = page.locator('[data-testid^="ops-reason-"]')
    assert [order.nth(i).get_attribute("data-testid") for i in range(order.count())] == [
        "ops-reason-bad_json", "ops-reason-unknown_device"]  # the most common first
    bad.get_by_role("button", name="show the latest").click()
    box = page.locator('[data-testid="ops-dead-letter-list"]')
    box.locator('[data-testid^="ops-dead-letter-"]').first.wait_for(timeout=WAIT_MS)
    assert box.locator('[data-testid^="ops-dead-letter-"]').count() == 3
    assert "{not json" in box.inner_text() and "ghost-device" not in box.inner_text()
    page.screenshot(path=str(ARTIFACTS / "ops-dead-letters.png"), full_page=True)
    no_overflow(page)
    assert not errors, errors


# ---------------------------------------------------------------- who may

@pytest.mark.parametrize("role", ["crew", "venue"])
def test_the_ops_pages_are_not_for_crew_or_venue_users(live, browser, role):
    token = token_as(live.app, f"{role}-z", role, kits=[KIT] if role == "crew" else [],
                     venues=["v1"] if role == "venue" else [])
    ctx = browser.raw.new_context(viewport={"width": 1280, "height": 900})
    ctx.add_cookies([{"name": "popkit_token", "value": token, "url": live.base, "httpOnly": True, "sameSite": "Strict"}])
    page = ctx.new_page()
    page.goto(f"{live.base}/#/ops/users")
    page.locator('[data-testid="user-name"]', has_text=role).wait_for(timeout=WAIT_MS)
    assert page.locator('[data-testid="ops-link"]').is_hidden()
    if role == "crew":
        page.locator('[data-testid="ops-refused"]').wait_for(timeout=WAIT_MS)
    assert page.locator('[data-testid="ops-users"]').count() == 0
    h = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{live.base}/api/v1/users", headers=h).status_code == 403
    assert httpx.post(f"{live.base}/api/v1/users/crew-z/password", headers=h).status_code == 403
    assert httpx.get(f"{live.base}/api/v1/dead-letters/reasons", headers=h).status_code == 403
