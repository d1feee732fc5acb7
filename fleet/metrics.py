"""Ingest counters, rendered as Prometheus text. Only the ingest writer thread mutates them."""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field

log = logging.getLogger("popkit.fleet.ingest")


@dataclass
class IngestMetrics:
    received: int = 0
    ingested: int = 0
    duplicates: int = 0
    states: int = 0
    batches: int = 0
    receipts: int = 0
    store_errors: int = 0
    nacks: int = 0  # receipts asking a producer again for seqs that never arrived (fleet/ledger/gaps.py)
    gaps_given_up: int = 0  # missing seqs asked for gap_max_asks times, then left (still counted as missing)
    rejected: Counter = field(default_factory=Counter)
    last_batch_size: int = 0
    last_commit_s: float = 0.0
    _last_logged: dict = field(default_factory=dict)

    def reject(self, reason: str, topic: str, detail: str, every_s: float = 60.0) -> None:
        """Count a rejected message; log the first of each reason once a minute, with a count of the rest."""
        self.rejected[reason] += 1
        now = time.monotonic()
        last = self._last_logged.get(reason)
        if last is None or now - last[0] >= every_s:
            since = self.rejected[reason] - (last[1] if last else 0)
            log.warning("rejected %s (%d since last report): %s: %s", reason, since, topic[:120], detail)
            self._last_logged[reason] = (now, self.rejected[reason])


def render_prometheus(m: IngestMetrics, devices_online: int, devices_total: int, queue_depth: int) -> str:
    lines = [
        "# HELP popkit_messages_received_total MQTT messages taken from the broker by this worker.",
        "# TYPE popkit_messages_received_total counter",
        f"popkit_messages_received_total {m.received}",
        "# HELP popkit_messages_ingested_total Ledger messages (telemetry, event, ack) newly stored.",
        "# TYPE popkit_messages_ingested_total counter",
        f"popkit_messages_ingested_total {m.ingested}",
        "# HELP popkit_messages_duplicate_total Ledger messages already stored (same device, boot, seq).",
        "# TYPE popkit_messages_duplicate_total counter",
        f"popkit_messages_duplicate_total {m.duplicates}",
        "# HELP popkit_state_messages_total Birth, death and state messages applied.",
        "# TYPE popkit_state_messages_total counter",
        f"popkit_state_messages_total {m.states}",
        "# HELP popkit_messages_rejected_total Messages refused, by reason; kept in the dead-letter table.",
        "# TYPE popkit_messages_rejected_total counter",
    ]
    for reason in sorted(set(m.rejected) | {"bad_json", "invalid", "oversize", "unknown_topic", "unknown_device"}):
        lines.append(f'popkit_messages_rejected_total{{reason="{reason}"}} {m.rejected.get(reason, 0)}')
    lines += [
        "# HELP popkit_receipts_published_total Receipts sent to producers after commit.",
        "# TYPE popkit_receipts_published_total counter",
        f"popkit_receipts_published_total {m.receipts}",
        "# HELP popkit_gap_requests_total Receipts asking a producer to resend seqs that never arrived though later ones did.",
        "# TYPE popkit_gap_requests_total counter",
        f"popkit_gap_requests_total {m.nacks}",
        "# HELP popkit_gap_seqs_given_up_total Missing seqs asked for the most times allowed, then left (still counted as missing).",
        "# TYPE popkit_gap_seqs_given_up_total counter",
        f"popkit_gap_seqs_given_up_total {m.gaps_given_up}",
        "# HELP popkit_store_errors_total Batches whose commit failed and was retried.",
        "# TYPE popkit_store_errors_total counter",
        f"popkit_store_errors_total {m.store_errors}",
        "# HELP popkit_ingest_queue_depth Messages received but not yet committed.",
        "# TYPE popkit_ingest_queue_depth gauge",
        f"popkit_ingest_queue_depth {queue_depth}",
        "# HELP popkit_devices_online Devices whose last state is online.",
        "# TYPE popkit_devices_online gauge",
        f"popkit_devices_online {devices_online}",
        "# HELP popkit_devices Devices registered.",
        "# TYPE popkit_devices gauge",
        f"popkit_devices {devices_total}",
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------ alerts (fleet/alerts/rules.py, fleet/alerts/notify.py)


@dataclass
class AlertMetrics:
    """Per process, like the ingest counters; mutated by the evaluator and notifier threads only."""

    evaluations: int = 0
    evaluation_errors: int = 0
    notifications_sent: int = 0
    notifications_failed: int = 0


ALERT_METRICS = AlertMetrics()


def render_alert_metrics(open_counts: dict[tuple[str, str], int], rules, severities,
                         m: AlertMetrics = ALERT_METRICS) -> str:
    """Prometheus text for alerts: ``open_counts`` is Store.alerts.open_counts() ((rule, severity) -> n)."""
    lines = [
        "# HELP popkit_alerts_open Alerts firing (open or acknowledged, not resolved), by rule and severity.",
        "# TYPE popkit_alerts_open gauge",
    ]
    keys = sorted({(r, s) for r in rules for s in severities} | set(open_counts))
    for rule, severity in keys:
        lines.append(f'popkit_alerts_open{{rule="{rule}",severity="{severity}"}} {open_counts.get((rule, severity), 0)}')
    lines += [
        "# HELP popkit_notifications_sent_total Alert webhook notifications delivered by this worker.",
        "# TYPE popkit_notifications_sent_total counter",
        f"popkit_notifications_sent_total {m.notifications_sent}",
        "# HELP popkit_notifications_failed_total Alert webhook notifications given up after their retries.",
        "# TYPE popkit_notifications_failed_total counter",
        f"popkit_notifications_failed_total {m.notifications_failed}",
        "# HELP popkit_alert_evaluation_errors_total Alert evaluations that failed (and were retried next round).",
        "# TYPE popkit_alert_evaluation_errors_total counter",
        f"popkit_alert_evaluation_errors_total {m.evaluation_errors}",
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------ kit views (fleet/views/cache.py)


def render_view_metrics(stats) -> str:
    """Prometheus text for the overview's kept views: what keeping them fresh costs."""
    return "\n".join([
        "# HELP popkit_kit_view_passes_total Recomputations of the kit views: every kit (full) or the changed ones (dirty).",
        "# TYPE popkit_kit_view_passes_total counter",
        f'popkit_kit_view_passes_total{{kind="full"}} {stats.full_passes}',
        f'popkit_kit_view_passes_total{{kind="dirty"}} {stats.dirty_passes}',
        "# HELP popkit_kit_views_recomputed_total Kit views recomputed, all passes.",
        "# TYPE popkit_kit_views_recomputed_total counter",
        f"popkit_kit_views_recomputed_total {stats.kits_recomputed}",
        "# HELP popkit_kit_view_reads_recomputed_total Reads that recomputed a view first (it had changed, or was too old).",
        "# TYPE popkit_kit_view_reads_recomputed_total counter",
        f"popkit_kit_view_reads_recomputed_total {stats.on_read}",
        "# HELP popkit_kit_view_full_pass_seconds How long the last full pass took.",
        "# TYPE popkit_kit_view_full_pass_seconds gauge",
        f"popkit_kit_view_full_pass_seconds {stats.last_full_s:.4f}",
        "# HELP popkit_kit_view_errors_total Passes that failed (retried; reads recompute meanwhile).",
        "# TYPE popkit_kit_view_errors_total counter",
        f"popkit_kit_view_errors_total {stats.errors}",
    ]) + "\n"


def render_login_metrics(m) -> str:
    """Prometheus text for the API's logins (fleet/auth/login.py LoginMetrics): failures are guessing, or a
    crew member who forgot; throttled ones were refused unchecked (fleet/auth/throttle.py)."""
    return "\n".join([
        "# HELP popkit_api_logins_total Logins at POST /api/v1/auth/token by outcome.",
        "# TYPE popkit_api_logins_total counter",
        f'popkit_api_logins_total{{outcome="ok"}} {m.succeeded}',
        f'popkit_api_logins_total{{outcome="failed"}} {m.failed}',
        f'popkit_api_logins_total{{outcome="throttled"}} {m.throttled}',
    ]) + "\n"
