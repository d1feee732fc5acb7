"""Alert notifications by webhook: a JSON POST per alert, from a thread of its own.

When (AlertStore.due_notifications):

* an alert still ``open`` (not acknowledged) ``grace_s`` after it opened: ``event: "opened"``;
  one that resolves within the grace period is never notified (a blip);
* again every ``repeat_s`` while it stays open and unacknowledged: ``event: "reminder"``;
* once when it resolves, if it was notified before: ``event: "resolved"``.

Each send is claimed first (compare-and-set of ``last_notified_ms``), so of several fleet workers
one sends. A POST that fails (connection error, timeout, HTTP 408/429/5xx) is retried with
exponential backoff and jitter; after the last retry (or at once for any other 4xx) the failure is
counted (``popkit_notifications_failed_total``) and written to the alert's history, and the next
try is a repeat interval later. Nothing here runs on the ingest or evaluator threads, and nothing
raises out of the thread: a webhook that hangs delays only further notifications.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable

from fleet.metrics import ALERT_METRICS, AlertMetrics

log = logging.getLogger("popkit.fleet.notify")

USER_AGENT = "popkit-fleet-alerts/1"


@dataclass(frozen=True)
class NotifyConfig:
    url: str
    grace_s: float = 120.0
    repeat_s: float = 3600.0
    timeout_s: float = 5.0
    retries: int = 4
    backoff_s: float = 1.0
    poll_s: float = 1.0

    @classmethod
    def from_settings(cls, s: Any) -> "NotifyConfig | None":
        if not s.alert_webhook_url:
            return None
        return cls(url=s.alert_webhook_url, grace_s=s.alert_notify_grace_s, repeat_s=s.alert_notify_repeat_s,
                   timeout_s=s.alert_webhook_timeout_s, retries=s.alert_webhook_retries,
                   backoff_s=s.alert_webhook_backoff_s)


class PermanentFailure(Exception):
    """The webhook refused the request in a way a retry cannot fix (a 4xx other than 408/429)."""


def payload(alert: dict, event: str, now_ms: int) -> dict:
    """The JSON body of one notification."""
    path = f"/api/v1/alerts/{alert['id']}"
    return dict(
        event=event,  # opened | reminder | resolved
        id=alert["id"], rule=alert["rule"], subject=alert["subject"], kit_id=alert["kit_id"],
        severity=alert["severity"], state=alert["state"], message=alert["message"],
        first_seen_ms=alert["first_seen_ms"], last_seen_ms=alert["last_seen_ms"], count=alert["count"],
        resolved_ms=alert["resolved_ms"], resolved_by=alert["resolved_by"], details=alert["details"],
        notification=alert["notify_count"] + 1, sent_ms=now_ms,
        links=dict(alert=path, acknowledge=f"{path}/acknowledge", resolve=f"{path}/resolve"),
    )


def post_json(url: str, body: dict, timeout_s: float) -> int:
    """POST ``body`` as JSON; the HTTP status if 2xx, else raises (PermanentFailure: do not retry)."""
    data = json.dumps(body, separators=(",", ":")).encode()
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "application/json", "User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310 - URL from ops' settings
            resp.read(65536)
            return resp.status
    except urllib.error.HTTPError as exc:
        if 400 <= exc.code < 500 and exc.code not in (408, 429):
            raise PermanentFailure(f"HTTP {exc.code}") from exc
        raise


def describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        return f"{type(exc.reason).__name__}: {exc.reason}"
    return f"{type(exc).__name__}: {exc}"


class Notifier:
    def __init__(self, store: Any, cfg: NotifyConfig, metrics: AlertMetrics = ALERT_METRICS,
                 send: Callable[[str, dict, float], int] = post_json, clock: Callable[[], int] | None = None):
        self.store, self.cfg, self.metrics, self.send = store, cfg, metrics, send
        self.clock = clock or (lambda: int(time.time() * 1000))
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet-notify", daemon=True)

    @classmethod
    def from_settings(cls, store: Any, settings: Any, **kwargs: Any) -> "Notifier | None":
        cfg = NotifyConfig.from_settings(settings)
        return cls(store, cfg, **kwargs) if cfg else None

    def start(self) -> "Notifier":
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # noqa: BLE001 - the database may be away; try again next round
                log.exception("alert notification round failed")
            self._wake.wait(self.cfg.poll_s)
            self._wake.clear()

    def run_once(self, now_ms: int | None = None) -> int:
        """Send every notification due now; returns how many were attempted."""
        now = now_ms if now_ms is not None else self.clock()
        due = self.store.alerts.due_notifications(now, int(self.cfg.grace_s * 1000), int(self.cfg.repeat_s * 1000))
        tried = 0
        for alert in due:
            if self._stop.is_set():
                break
            if not self.store.alerts.claim_notification(alert, now):
                continue  # another worker has it
            if alert["state"] == "resolved":
                event = "resolved"
            else:
                event = "reminder" if alert["notify_count"] else "opened"
            tried += 1
            ok, detail = self.deliver(payload(alert, event, now))
            try:
                self.store.alerts.record_notification(alert["id"], ok, f"{event}: {detail}", self.clock())
            except Exception:  # noqa: BLE001
                log.exception("could not record the notification of alert %s", alert["id"])
        return tried

    def deliver(self, body: dict) -> tuple[bool, str]:
        """POST with retries; (delivered?, what happened). Never raises."""
        attempts = self.cfg.retries + 1
        last = ""
        for attempt in range(attempts):
            try:
                status = self.send(self.cfg.url, body, self.cfg.timeout_s)
                self.metrics.notifications_sent += 1
                return True, f"HTTP {status}" + (f" after {attempt} retries" if attempt else "")
            except PermanentFailure as exc:
                last = str(exc)
                break
            except Exception as exc:  # noqa: BLE001 - network, timeout, 5xx: retry
                last = describe(exc)
            if attempt < attempts - 1:
                delay = self.cfg.backoff_s * (2 ** attempt) * random.uniform(0.5, 1.5)
                if self._stop.wait(delay):
                    break
        self.metrics.notifications_failed += 1
        log.warning("alert %s (%s) not delivered to the webhook: %s", body.get("id"), body.get("event"), last)
        return False, f"gave up: {last}"
