"""Notifications by email: one message per send, through the SMTP server the fleet's settings name
(POPKIT_NOTIFY_SMTP_*), with Python's smtplib. The subject says what happened; the body says it
again in words, with the alert's link and the whole JSON a webhook would get.

Errors are sorted as for a webhook (fleet/notify/delivery.py): no connection or a timeout is tried
again, as is an SMTP 4xx (the server says: later); an SMTP 5xx (no such mailbox, refused) is final.
"""

from __future__ import annotations

import json
import smtplib
import socket
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from fleet.notify.delivery import DeliveryError


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int = 587
    sender: str = "popkit-fleet@localhost"
    user: str | None = None
    password: str | None = None
    tls: str = "starttls"  # starttls | tls | none

    @classmethod
    def from_settings(cls, s: Any) -> "SmtpConfig | None":
        if not s.notify_smtp_host:
            return None
        password = s.notify_smtp_password.get_secret_value() if s.notify_smtp_password else None
        return cls(host=s.notify_smtp_host, port=s.notify_smtp_port, sender=s.notify_smtp_from,
                   user=s.notify_smtp_user, password=password, tls=s.notify_smtp_tls)


def subject(body: dict) -> str:
    if body["event"] == "test":
        return f"[PopKit] test notification to {body['target']}"
    return f"[PopKit] {body['event']}: {body['severity']} {body['rule']}: {body['message']}"[:200]


def message(cfg: SmtpConfig, to: str, body: dict) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = cfg.sender, to, subject(body)
    lines = [body.get("message", "")]
    if body["event"] != "test":
        lines += ["", f"Alert {body['id']} ({body['rule']}, {body['severity']}) on kit {body['kit_id']}: {body['state']}.",
                  f"Acknowledge it on the fleet's dashboard, or POST {body['links']['acknowledge']}."]
    lines += ["", json.dumps(body, indent=2)]
    msg.set_content("\n".join(lines))
    return msg


def send_email(cfg: SmtpConfig | None, url: str, body: dict, timeout_s: float) -> str:
    """Send one message to the target's ``mailto:`` address; what the server said, else DeliveryError."""
    if cfg is None:
        raise DeliveryError("no SMTP server set (POPKIT_NOTIFY_SMTP_HOST)", "other", False)
    to = url.removeprefix("mailto:")
    try:
        client = (smtplib.SMTP_SSL if cfg.tls == "tls" else smtplib.SMTP)(cfg.host, cfg.port, timeout=timeout_s)
        with client:
            if cfg.tls == "starttls":
                client.starttls()
            if cfg.user:
                client.login(cfg.user, cfg.password or "")
            client.send_message(message(cfg, to, body))
    except smtplib.SMTPRecipientsRefused as exc:
        code, said = next(iter(exc.recipients.values()))
        raise _refused(code, said) from exc
    except smtplib.SMTPResponseException as exc:
        raise _refused(exc.smtp_code, exc.smtp_error) from exc
    except (TimeoutError, socket.timeout) as exc:
        raise DeliveryError(f"timed out after {timeout_s:g} s", "timeout", True) from exc
    except (OSError, smtplib.SMTPException) as exc:
        raise DeliveryError(f"{type(exc).__name__}: {exc}", "connection", True) from exc
    return "SMTP 250"


def _refused(code: int, said: bytes | str) -> DeliveryError:
    text = said.decode(errors="replace") if isinstance(said, bytes) else str(said)
    transient = 400 <= code < 500
    return DeliveryError(f"SMTP {code} {text}"[:200], "smtp_4xx" if transient else "smtp_5xx", transient)
