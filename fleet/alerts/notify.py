"""Alert notifications: escalation over ops' targets (fleet/notify/), from threads of their own.

Each round (every ``poll_s``, and at once after an evaluation) the notifier:

1. plans: for each open, unacknowledged alert past the policy's grace period, the next step of its
   escalation (fleet/notify/model.py next_step: the first target, its repeats, the next target...);
   for each alert resolved after it was notified, ``resolved`` to every target told of it. A step
   is queued as a send in the same transaction that advances the alert's escalation, so of several
   fleet workers one plans it; an alert that resolves within the grace period is never notified;
2. delivers: each target with sends due gets a thread that works through them oldest first
   (fleet/notify/delivery.py: one attempt each, retried later with backoff), so a target that fails
   or hangs holds up its own sends only, never another target's nor the next round's planning.

Nothing here runs on the ingest or evaluator threads, and nothing raises out of a thread.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from fleet.notify.delivery import Delivery, DeliveryConfig
from fleet.notify.model import Policy, chain, next_step, payload

log = logging.getLogger("popkit.fleet.notify")


@dataclass(frozen=True)
class NotifyConfig:
    policy: Policy = Policy()  # until ops save one (fleet/notify/store.py)
    delivery: DeliveryConfig = DeliveryConfig()
    poll_s: float = 1.0

    @classmethod
    def from_settings(cls, s: Any) -> "NotifyConfig":
        return cls(policy=Policy(grace_s=s.alert_notify_grace_s, repeat_s=s.alert_notify_repeat_s,
                                 repeats=s.alert_notify_repeats),
                   delivery=DeliveryConfig.from_settings(s), poll_s=s.alert_notify_poll_s)


def seed_target(store: Any, url: str | None) -> None:
    """POPKIT_ALERT_WEBHOOK_URL, from before targets: the first target of a fleet that has none."""
    if url and not store.notify.targets():
        store.notify.add_target(dict(name="webhook", kind="webhook", url=url, audience="ops", kits=[], rules=[],
                                     min_severity="warning", position=0, enabled=True, repeat_s=None, repeats=None))
        log.info("notification target 'webhook' made from POPKIT_ALERT_WEBHOOK_URL")


class Notifier:
    def __init__(self, store: Any, cfg: NotifyConfig = NotifyConfig(), delivery: Delivery | None = None,
                 clock: Callable[[], int] | None = None):
        self.store, self.cfg = store, cfg
        self.delivery = delivery or Delivery(store, cfg.delivery)
        self.clock = clock or (lambda: int(time.time() * 1000))
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._busy: dict[int, threading.Thread] = {}  # target id -> its delivery thread
        self._thread = threading.Thread(target=self._run, name="fleet-notify", daemon=True)

    @classmethod
    def from_settings(cls, store: Any, settings: Any, **kwargs: Any) -> "Notifier":
        seed_target(store, settings.alert_webhook_url)
        return cls(store, NotifyConfig.from_settings(settings), **kwargs)

    def start(self) -> "Notifier":
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        for th in list(self._busy.values()):
            th.join(max(0.1, timeout / 2))

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.plan()
                self.deliver()
            except Exception:  # noqa: BLE001 - the database may be away; try again next round
                log.exception("alert notification round failed")
            self._wake.wait(self.cfg.poll_s)
            self._wake.clear()

    def run_once(self, now_ms: int | None = None) -> int:
        """Plan what is due at ``now_ms`` and deliver it before returning (tests, tools); the number
        of sends planned."""
        planned = self.plan(now_ms)
        self.deliver(now_ms, wait=True)
        return planned

    # ------------------------------------------------------------ planning

    def plan(self, now_ms: int | None = None) -> int:
        """Queue every send due now; returns how many this worker queued."""
        now = now_ms if now_ms is not None else self.clock()
        notify = self.store.notify
        policy = notify.policy(self.cfg.policy)
        targets = notify.targets()
        planned = 0
        for alert_id, esc in notify.due_open(now, int(policy.grace_s * 1000), limit=1000):
            alert = self.store.alerts.get(alert_id, history=False)
            if alert is None or alert["state"] != "open":
                continue
            step = next_step(esc, chain(targets, alert), policy, now)
            if step is None:
                continue
            send = dict(target_id=step.target.id, target_name=step.target.name, alert_id=alert_id,
                        kit_id=alert["kit_id"], event=step.event,
                        body=payload(alert, step.event, step.target, now, step.after.step), created_ms=now)
            planned += notify.plan(alert_id, esc, step.after, send)
        by_id = {t.id: t for t in targets}
        for alert_id in notify.due_resolved():
            alert = self.store.alerts.get(alert_id, history=False)
            if alert is None:
                continue
            told = [by_id[i] for i in notify.told(alert_id) if i in by_id]
            esc = notify.escalation(alert_id)
            step_no = (esc.step if esc else 0) + 1
            sends = [dict(target_id=t.id, target_name=t.name, alert_id=alert_id, kit_id=alert["kit_id"],
                          event="resolved", body=payload(alert, "resolved", t, now, step_no), created_ms=now)
                     for t in told]
            if notify.plan_resolved(alert_id, sends):
                planned += len(sends)
        return planned

    # ------------------------------------------------------------ delivery

    def deliver(self, now_ms: int | None = None, wait: bool = False) -> None:
        """Start a thread for each target with sends waiting that has none running (``wait``: and
        join them)."""
        started = []
        for target_id in self.store.notify.pending_targets():
            running = self._busy.get(target_id)
            if running is not None and running.is_alive():
                continue
            th = threading.Thread(target=self._drain, args=(target_id, now_ms), name=f"fleet-notify-{target_id}",
                                  daemon=True)
            self._busy[target_id] = th
            th.start()
            started.append(th)
        if wait:
            for th in started:
                th.join()

    def _drain(self, target_id: int, fixed_now: int | None) -> None:
        """Send the target's due sends in order; stop at one not due yet (it waits for its retry)."""
        try:
            while not self._stop.is_set():
                now = fixed_now if fixed_now is not None else self.clock()
                send = self.store.notify.oldest_pending(target_id)
                if send is None or send["next_try_ms"] > now:
                    return
                if not self.store.notify.claim(send, now, self.cfg.delivery.lease_ms):
                    return  # another worker has it
                target = self.store.notify.target(target_id)
                if self.delivery.attempt(send, target, fixed_now) == "pending":
                    return
        except Exception:  # noqa: BLE001 - this target's round ends; the next round tries again
            log.exception("delivering to notification target %s failed", target_id)
