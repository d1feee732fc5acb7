"""Notification counters of this process, by target, rendered as Prometheus text (/metrics)."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

from fleet.notify.model import FAILURE_REASONS


@dataclass
class NotifyMetrics:
    """Mutated by the delivery threads (one per target at a time), hence the lock."""

    sent: Counter = field(default_factory=Counter)  # target -> sends delivered
    given_up: Counter = field(default_factory=Counter)  # target -> sends failed after their retries
    failures: Counter = field(default_factory=Counter)  # (target, reason) -> failed attempts, retried or not
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def delivered(self, target: str) -> None:
        with self.lock:
            self.sent[target] += 1

    def failed(self, target: str, reason: str, final: bool) -> None:
        with self.lock:
            self.failures[(target, reason)] += 1
            if final:
                self.given_up[target] += 1


NOTIFY_METRICS = NotifyMetrics()


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_notify_metrics(targets: list[str], m: NotifyMetrics = NOTIFY_METRICS) -> str:
    """Every target's series (zero until something happens, so a rate shows from the start) and
    those of targets since deleted or renamed that this process still counts."""
    with m.lock:
        names = sorted(set(targets) | set(m.sent) | set(m.given_up) | {t for t, _r in m.failures})
        lines = [
            "# HELP popkit_notification_sends_total Notifications finished by this worker, by target and outcome "
            "(failed: given up after its retries).",
            "# TYPE popkit_notification_sends_total counter",
        ]
        for name in names:
            lines.append(f'popkit_notification_sends_total{{target="{_label(name)}",outcome="sent"}} {m.sent[name]}')
            lines.append(f'popkit_notification_sends_total{{target="{_label(name)}",outcome="failed"}} {m.given_up[name]}')
        lines += [
            "# HELP popkit_notification_failures_total Failed notification attempts (retried or not), by target and reason.",
            "# TYPE popkit_notification_failures_total counter",
        ]
        for name in names:
            for reason in FAILURE_REASONS:
                lines.append(f'popkit_notification_failures_total{{target="{_label(name)}",reason="{reason}"}} '
                             f"{m.failures[(name, reason)]}")
    return "\n".join(lines) + "\n"
