"""How a notification reaches its target: a JSON POST to a webhook (or an email, fleet/notify/email.py),
one attempt at a time.

An attempt that fails for a reason a retry may fix (no connection, a timeout, HTTP 408/429/5xx) is
tried again after a backoff that doubles each time (with jitter), ``retries`` times; then, or at
once for any other 4xx, the send has failed. Every failed attempt is counted by target and reason
(fleet/notify/metrics.py); a send's final outcome goes into its alert's history (the audit log).
The retry times are kept with the send in the database, not in a sleeping thread: a target that
fails or hangs holds up only its own sends (fleet/alerts/notify.py gives each target its thread).
"""

from __future__ import annotations

import json
import logging
import random
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable

from fleet.metrics import ALERT_METRICS, AlertMetrics
from fleet.notify.metrics import NOTIFY_METRICS, NotifyMetrics
from fleet.notify.model import Target

log = logging.getLogger("popkit.fleet.notify")

USER_AGENT = "popkit-fleet-alerts/1"


class DeliveryError(Exception):
    """An attempt failed; ``reason`` is one of model.FAILURE_REASONS, ``retry`` whether to try again."""

    def __init__(self, detail: str, reason: str, retry: bool):
        super().__init__(detail)
        self.reason, self.retry = reason, retry


def post_json(url: str, body: dict, timeout_s: float) -> int:
    """POST ``body`` as JSON; the HTTP status if 2xx, else raises DeliveryError."""
    data = json.dumps(body, separators=(",", ":")).encode()
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "application/json", "User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310 - URL from ops' targets
            resp.read(65536)
            return resp.status
    except urllib.error.HTTPError as exc:
        if 400 <= exc.code < 500:
            raise DeliveryError(f"HTTP {exc.code}", "http_4xx", exc.code in (408, 429)) from exc
        raise DeliveryError(f"HTTP {exc.code}", "http_5xx" if exc.code >= 500 else "other", True) from exc
    except urllib.error.URLError as exc:
        timeout = isinstance(exc.reason, (TimeoutError, socket.timeout))
        raise DeliveryError(f"{type(exc.reason).__name__}: {exc.reason}", "timeout" if timeout else "connection",
                            True) from exc
    except (TimeoutError, socket.timeout) as exc:
        raise DeliveryError(f"timed out after {timeout_s:g} s", "timeout", True) from exc
    except OSError as exc:
        raise DeliveryError(f"{type(exc).__name__}: {exc}", "connection", True) from exc


@dataclass(frozen=True)
class DeliveryConfig:
    timeout_s: float = 5.0
    retries: int = 4
    backoff_s: float = 1.0
    smtp: Any = None  # fleet.notify.email.SmtpConfig: the server email targets go through; None: none set

    @classmethod
    def from_settings(cls, s: Any) -> "DeliveryConfig":
        from fleet.notify.email import SmtpConfig

        return cls(timeout_s=s.alert_webhook_timeout_s, retries=s.alert_webhook_retries,
                   backoff_s=s.alert_webhook_backoff_s, smtp=SmtpConfig.from_settings(s))

    @property
    def lease_ms(self) -> int:
        """How long a claimed attempt is left to its worker before another may try it."""
        return int(self.timeout_s * 1000) + 30_000


class Delivery:
    def __init__(self, store: Any, cfg: DeliveryConfig, metrics: NotifyMetrics = NOTIFY_METRICS,
                 totals: AlertMetrics = ALERT_METRICS, send: Callable[[str, dict, float], int] = post_json,
                 clock: Callable[[], int] | None = None):
        self.store, self.cfg, self.metrics, self.totals, self.send = store, cfg, metrics, totals, send
        self.clock = clock or (lambda: int(time.time() * 1000))

    def attempt(self, send: dict, target: Target | None, now: int | None = None) -> str:
        """One claimed attempt of ``send`` (to ``target``; None: deleted since). Records the outcome
        as of ``now`` (None: the clock once the attempt is over); returns the send's state after it:
        sent, failed or pending (tried again later). Never raises."""
        name = target.name if target else send["target"]
        try:
            if target is None:
                raise DeliveryError("the target was deleted", "other", False)
            said = self._deliver(target, send["body"])
        except Exception as exc:  # noqa: BLE001 - whatever went wrong is this target's, counted and recorded
            err = exc if isinstance(exc, DeliveryError) else DeliveryError(f"{type(exc).__name__}: {exc}", "other", True)
            return self._failed(send, name, err, now if now is not None else self.clock())
        now = now if now is not None else self.clock()
        tries = send["attempts"]
        outcome = said + (f" after {tries} retries" if tries else "")
        self.store.notify.finish(send["id"], "sent", outcome, None, now)
        self.metrics.delivered(name)
        self.totals.notifications_sent += 1
        self._history(send, name, True, outcome)
        return "sent"

    def _deliver(self, target: Target, body: dict) -> str:
        """One try at the target, by its kind; what the other end said ("HTTP 200", "SMTP 250")."""
        if target.kind == "email":
            from fleet.notify.email import send_email  # here: email.py builds on this module

            return send_email(self.cfg.smtp, target.url, body, self.cfg.timeout_s)
        return f"HTTP {self.send(target.url, body, self.cfg.timeout_s)}"

    def _failed(self, send: dict, name: str, err: DeliveryError, now: int) -> str:
        tries = send["attempts"] + 1  # this attempt included
        final = not err.retry or tries > self.cfg.retries
        self.metrics.failed(name, err.reason, final)
        if not final:
            delay_ms = self.cfg.backoff_s * 1000 * (2 ** (tries - 1)) * random.uniform(0.5, 1.5)
            self.store.notify.finish(send["id"], "pending", f"{err} (attempt {tries}, retrying)", err.reason, now,
                                     next_try_ms=now + int(delay_ms))
            return "pending"
        outcome = f"gave up: {err}" + (f" after {tries} attempts" if tries > 1 else "")
        self.store.notify.finish(send["id"], "failed", outcome, err.reason, now)
        self.totals.notifications_failed += 1
        log.warning("notification %s of alert %s to %s not delivered: %s", send["event"], send["alert_id"], name, outcome)
        self._history(send, name, False, outcome)
        return "failed"

    def _history(self, send: dict, name: str, ok: bool, outcome: str) -> None:
        if send["alert_id"] is None:
            return  # a test send: the API's audit has it
        try:
            self.store.alerts.record_notification(send["alert_id"], ok, f"{send['event']} to {name}: {outcome}")
        except Exception:  # noqa: BLE001 - the send is recorded with its outcome; its history line is not vital
            log.exception("could not record the notification of alert %s", send["alert_id"])
