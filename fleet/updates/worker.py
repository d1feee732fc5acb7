"""The rollout worker: steps the running rollouts and sends each offer to its kit's agent.

Every ``update_step_s``, under the lease "updates" (fleet/leases.py: one of several fleet workers
steps at a time; the store's conditional updates keep two from offering a device twice anyway),
``tick`` does three things:

1. an offered device with no news for ``update_offer_timeout_s`` (no ack of its command, no state
   report) has failed: "no answer from the kit in 2 h" (it counts toward the error threshold);
2. UpdateDelivery.step: who is offered now (fleet/updates/model.py: groups, shows, kits in use, holds,
   the rate);
3. each offer becomes an ``update`` command to the kit's agent (kits.contract.UpdateCommandArgs),
   stored pending then published on its cmd topic (fleet/commands/), with a long expiry so a slow
   fetch still acks in time, the bundle's URL on this fleet and a bundle token for (kit, release)
   (fleet/updates/tokens.py, served by fleet/api/routes/bundle.py).

The agent's ack and the devices' states come back through ingest (UpdateStore.acks_reported,
states_reported). Tests and the benchmark call ``tick(now)`` directly; ``now`` moves the planner's
clock (shows, in use, the rate, the timeout), while tokens, commands and the lease keep real time.
"""

from __future__ import annotations

import logging
import secrets
import threading
from typing import Any

from fleet.auth.secret import signing_key
from fleet.commands import PublishFailed, UnknownDevice
from fleet.db import now_ms
from fleet.updates.delivery import UpdateDelivery
from fleet.updates.tokens import mint
from kits.contract import UpdateCommandArgs

log = logging.getLogger("popkit.fleet.updates")

LEASE = "updates"


def duration(seconds: float) -> str:
    """2 h, 90 min, 45 s: how a timeout reads in a reason."""
    s = int(seconds)
    if s >= 3600 and s % 3600 == 0:
        return f"{s // 3600} h"
    if s >= 60 and s % 60 == 0:
        return f"{s // 60} min"
    return f"{s} s"


class RolloutWorker:
    def __init__(self, store, publisher, settings, key: bytes | None = None):
        self.store = store
        self.publisher = publisher  # fleet.commands.Publisher (or anything with its send_command)
        self.settings = settings
        # The key the app signs with (app.state.auth.key): the bundle route checks tokens with it.
        # fleet.service passes settings whose key is fixed, so signing_key gives the same one.
        self.key = key if key is not None else signing_key(settings)
        self.delivery = UpdateDelivery(store)
        self.holder = secrets.randbits(62)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ one step

    def tick(self, now: int | None = None) -> list[dict]:
        """One step, if this worker holds the lease: returns the offers sent (each with its ``command``
        id), [] when another worker holds the lease or nothing was offered."""
        step_ms = int(self.settings.update_step_s * 1000)
        if not self.store.leases.hold(LEASE, self.holder, now_ms(), ttl_ms=max(3 * step_ms, 30_000)):
            return []
        now = now if now is not None else now_ms()
        timeout_s = self.settings.update_offer_timeout_s
        expired = self.store.updates.expire_offers(now - int(timeout_s * 1000),
                                                   f"no answer from the kit in {duration(timeout_s)}", now)
        if expired:
            log.warning("%d offered device(s) had no answer from their kit in %s: failed", expired,
                        duration(timeout_s))
        sent = []
        for offer in self.delivery.step(now):
            cmd = self.send(offer, now)
            if cmd is not None:
                sent.append(dict(offer, command=cmd["id"]))
        if sent:  # the kit views show each device's update: recompute those kits now, not at the next refresh
            self.store.changes.tell({o["kit"] for o in sent}, {o["device"] for o in sent})
        return sent

    def args(self, offer: dict) -> dict[str, Any]:
        """The update command's args for an offer (kits.contract.UpdateCommandArgs, validated)."""
        release = offer["release"]
        token = mint(self.key, offer["kit"], release, self.settings.update_token_ttl_s)
        return UpdateCommandArgs(
            rollout=offer["rollout"], release=release, device=offer["device"], fw=offer["fw"],
            manifest_sha256=offer["manifest_sha256"], size=offer["size"],
            url=f"{self.settings.bundle_base}/api/v1/releases/{release}/bundle/", token=token,
            downgrade=offer["downgrade"]).model_dump(mode="json")

    def send(self, offer: dict, now: int) -> dict | None:
        """Send one offer to its kit's agent; on failure the device waits again (a transient failure:
        the next step retries) or fails (the agent is unknown)."""
        rollout, device, agent = offer["rollout"], offer["device"], offer.get("agent")
        updates = self.store.updates
        if not agent:  # the planner holds such kits; a kit registered again without its agent meanwhile
            updates.not_sent(rollout, device, "no agent registered for this kit: nothing to deliver the update "
                             "through", failed=False, now=now)
            return None
        try:
            return self.publisher.send_command(agent, "update", self.args(offer),
                                               ttl_s=self.settings.update_command_ttl_s,
                                               requested_by=f"rollout {rollout}")
        except UnknownDevice:
            updates.not_sent(rollout, device, f"the kit's agent {agent} is not registered", failed=True, now=now)
        except (PublishFailed, ValueError) as exc:  # ValueError: PayloadTooLarge, or args the contract refuses
            log.warning("update command for %s (rollout %s) not sent: %s", device, rollout, exc)
            updates.not_sent(rollout, device, f"update command not sent: {str(exc)[:200]}",
                             failed=not isinstance(exc, PublishFailed), now=now)
        return None

    # ------------------------------------------------------------ thread

    def start(self) -> "RolloutWorker":
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="popkit-rollouts", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - a failed step is logged and tried again next period
                log.exception("rollout step failed; trying again in %s s", self.settings.update_step_s)
            self._stop.wait(self.settings.update_step_s)
