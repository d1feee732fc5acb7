"""Ops make a metrics machine token on the dashboard (#/ops/machines) in a real headless Chromium,
copy it from the page, Prometheus' scrape with it (httpx against the same fleet) succeeds; ops revoke
it on the page and the same scrape is refused. Screenshots in test-artifacts/machines-<step>.png."""

from __future__ import annotations

import httpx

from fleet.auth.testing import token_as
from tests.test_dashboard import live  # noqa: F401 - the fleet under uvicorn
from tests.test_dashboard_updates import ARTIFACTS, chromium  # noqa: F401 - the browser fixture


def test_ops_create_a_metrics_token_scrape_with_it_and_revoke_it(live, chromium):  # noqa: F811
    ctx = chromium.new_context(viewport={"width": 1280, "height": 900})
    ctx.grant_permissions(["clipboard-read", "clipboard-write"], origin=live.base)
    ctx.add_cookies([{"name": "popkit_token", "value": token_as(live.app, "ops-mia", "ops"), "url": live.base,
                      "httpOnly": True, "sameSite": "Strict"}])
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(live.base + "/#/ops")
        page.get_by_role("link", name="Machine tokens").click()
        page.wait_for_selector('[data-testid="machines-status"]:has-text("no machine token yet")', timeout=10000)
        page.screenshot(path=str(ARTIFACTS / "machines-empty.png"), full_page=True)

        form = page.locator('[data-testid="machines-form"]')
        form.get_by_label("Name").fill("prometheus")
        form.get_by_label("Scope").select_option("metrics")
        form.get_by_role("button", name="create").click()
        secret = page.locator('[data-testid="machines-token"]')
        secret.wait_for(state="visible", timeout=10000)
        token = secret.inner_text()
        assert token.startswith("pkm_")
        page.wait_for_selector('[data-testid="machines-table"] tr[data-active="true"]', timeout=10000)
        page.screenshot(path=str(ARTIFACTS / "machines-created.png"), full_page=True)
        page.get_by_role("button", name="copy").click()
        page.wait_for_selector('[data-testid="machines-status"]:has-text("token copied")', timeout=5000)
        assert page.evaluate("navigator.clipboard.readText()") == token

        scrape = {"Authorization": f"Bearer {token}"}
        r = httpx.get(live.base + "/metrics", headers=scrape, timeout=10)
        assert r.status_code == 200 and "popkit_devices_online" in r.text
        assert httpx.get(live.base + "/api/v1/kits", headers=scrape, timeout=10).status_code == 403

        page.get_by_role("button", name="done").click()
        assert secret.is_hidden() and secret.inner_text() == ""  # not left on screen
        row = page.locator('[data-testid="machines-table"] tbody tr').first
        assert token not in page.content() and token[:10] in row.inner_text()
        page.reload()  # last used shows once the page asks again
        row.get_by_role("button", name="revoke prometheus").click()
        page.wait_for_selector('[data-testid="machines-status"]:has-text("revoked")', timeout=10000)
        page.wait_for_selector('[data-testid="machines-table"] tr[data-active="false"]', timeout=10000)
        assert "by ops-mia" in row.inner_text() and "never" not in row.locator("td").nth(4).inner_text()
        page.screenshot(path=str(ARTIFACTS / "machines-revoked.png"), full_page=True)

        r = httpx.get(live.base + "/metrics", headers=scrape, timeout=10)
        assert r.status_code in (401, 403), r.text
        audit = httpx.get(live.base + "/api/v1/audit", params={"action": "machine-tokens"}, headers=live.auth).json()
        assert [(e["by"], e["what"]) for e in audit] == [
            ("ops-mia", "POST /api/v1/machine-tokens/{token_id}/revoke"), ("ops-mia", "POST /api/v1/machine-tokens")]
        assert not errors, errors
    finally:
        ctx.close()
