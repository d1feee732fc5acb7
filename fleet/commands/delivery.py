"""Pushing to devices: commands (channel ``cmd``) and desired config (channel ``config``).

The database is the record, the broker only carries: a command is stored as ``pending``
before it is published (so its ``ack`` always finds it, see CommandStore.settle_acks), and a
desired config is committed, with its new version, before it is published retained.

Which MQTT client: the ingest worker's own. It is already connected (and reconnects) with
the fleet's broker identity, so a deployment provisions no second account or ACL entry and
the publisher has no lifecycle of its own; paho's publish() is thread-safe, and a publish
while the link is down is queued by paho (QoS 1) and sent on reconnect. Commands are rare
next to ingest traffic, so sharing the socket costs nothing measurable. Any paho client
works (tests and tools may pass their own).
"""

from __future__ import annotations

import logging
import secrets
import threading
from typing import TYPE_CHECKING, Any

from fleet.commands.store import PayloadTooLarge
from fleet.db import now_ms
from kits.contract import MAX_DEVICE_PAYLOAD, Command, Config, encode, topic

if TYPE_CHECKING:
    from fleet.store import Store

log = logging.getLogger("popkit.fleet.commands")

DEFAULT_TTL_S = 60
MAX_TTL_S = 86_400
# A device coming online is sent again what it has not answered from this far back: a command
# asked while its kit's uplink was down never reached the kit (the bridge had no session at the
# fleet broker, or its queue was lost). Expired ones go too, so the device itself answers
# "expired" (it never runs them) and the record says so from the device, not from a guess.
RESEND_WINDOW_MS = MAX_TTL_S * 1000


class UnknownDevice(LookupError):
    pass


class NoScanners(LookupError):
    pass


class PublishFailed(RuntimeError):
    """paho refused the message (its queue is full): stored, but not on its way."""


class Publisher:
    def __init__(self, store: Store, client):
        self.store = store
        self.client = client
        # Commit-then-publish of configs under one lock: two versions of one device's retained
        # config reach the broker in version order (within this process; see docs/protocol.md).
        self._config_lock = threading.Lock()

    @classmethod
    def for_ingest(cls, store: Store, ingest) -> "Publisher":
        return cls(store, ingest.client)

    # ------------------------------------------------------------ commands

    def send_command(self, device_id: str, action: str, args: dict[str, Any] | None = None,
                     ttl_s: int = DEFAULT_TTL_S, requested_by: str | None = None) -> dict:
        """Store the command as pending, then publish it (QoS 1, never retained). Returns its view."""
        ref = self.store.registry.device_ref(device_id)
        if ref is None:
            raise UnknownDevice(device_id)
        ts = now_ms()
        cmd = Command(id=secrets.token_hex(8), ts=ts, expires=ts + ttl_s * 1000, action=action, args=args or {})
        payload = encode(cmd)
        if len(payload) > MAX_DEVICE_PAYLOAD:
            raise PayloadTooLarge(f"cmd would be {len(payload)} bytes; the contract allows {MAX_DEVICE_PAYLOAD}")
        self.store.commands.add(device_id, cmd, requested_by)
        self._publish(topic(ref.kit_id, device_id, "cmd"), payload, retain=False)
        return self.store.commands.get(cmd.id)

    def resend_pending(self, device_ids: list[str]) -> int:
        """Publish again each command these devices have not answered (they came online). A device
        runs an id once (device/lib/link.py keeps the recent ids), so a copy that also arrives from
        the broker's queue is answered, not run twice. Returns how many were sent."""
        n = 0
        for device_id, cmd in self.store.commands.pending(device_ids, now_ms() - RESEND_WINDOW_MS):
            ref = self.store.registry.device_ref(device_id)
            if ref is not None:
                self._publish(topic(ref.kit_id, device_id, "cmd"), encode(cmd), retain=False)
                n += 1
        if n:
            log.info("sent %d unanswered command(s) again to %s, online again", n, ", ".join(device_ids))
        return n

    # ------------------------------------------------------------ desired config

    def put_config(self, device_id: str, data: dict[str, Any]) -> Config:
        """Replace a device's desired config; published retained under the next version."""
        ref = self.store.registry.device_ref(device_id)
        if ref is None:
            raise UnknownDevice(device_id)
        return self._update({device_id: ref.kit_id}, lambda _old: data)[0][1]

    def update_configs(self, kits_by_device: dict[str, str], change) -> list[tuple[str, Config]]:
        """Set each device's desired config to ``change(current data or None, its kit)`` and publish
        each retained (one transaction per kit). Event keys and revocations (fleet/tickets/) push this way."""
        by_kit: dict[str, dict[str, str]] = {}
        for device_id, kit_id in kits_by_device.items():
            by_kit.setdefault(kit_id, {})[device_id] = kit_id
        out: list[tuple[str, Config]] = []
        for kit_id in sorted(by_kit):
            out += self._update(by_kit[kit_id], lambda old, kit_id=kit_id: change(old, kit_id))
        return out

    def republish_configs(self) -> int:
        """Publish every desired config again (retained): for a broker that lost its retained store.
        Harmless otherwise, as a device applies a version only once."""
        n = 0
        with self._config_lock:
            for kit_id, device_id, cfg in self.store.config.all_desired():
                self._publish(topic(kit_id, device_id, "config"), encode(cfg), retain=True)
                n += 1
        return n

    def _update(self, kits_by_device: dict[str, str], change) -> list[tuple[str, Config]]:
        with self._config_lock:
            configs = self.store.config.update(list(kits_by_device), change)
            for device_id, cfg in configs:
                self._publish(topic(kits_by_device[device_id], device_id, "config"), encode(cfg), retain=True)
        return configs

    # ------------------------------------------------------------ MQTT

    def _publish(self, name: str, payload: bytes, retain: bool) -> None:
        import paho.mqtt.client as mqtt

        info = self.client.publish(name, payload, qos=1, retain=retain)
        if info.rc == mqtt.MQTT_ERR_NO_CONN:
            # paho keeps a QoS 1 message it could not send and sends it on reconnect.
            log.warning("broker not connected: %s queued until the fleet reconnects", name)
        elif info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise PublishFailed(f"could not publish to {name}: {mqtt.error_string(info.rc)}")
