"""Which of the kit's own devices are online: their retained ``state`` on the kit's broker.

Scanners and lighting controllers are not driven by the agent; they are born on the broker
(a retained ``state``, online with their firmware version) and die by their Will. Subscribing
to the kit's state topics gives every device's latest state at once, retained, and then live.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable

from kits.contract import ContractError, State, decode, parse_topic, subscription
from agent.kitsession import KitSession

log = logging.getLogger("popkit.agent.statewatch")


class StateWatch(KitSession):
    def __init__(self, kit: str, mqtt_url: str):
        self.kit = kit
        self.states: dict[str, State] = {}
        self.ready = threading.Event()  # subscribed: the retained states are on their way
        # Called with (device, state) for every state that arrives, on the network thread: must not block
        # (the kit clock publishes its time at once on a device's birth: agent/kitclock.py).
        self.listeners: list[Callable[[str, State], None]] = []
        self._changed = threading.Condition()
        self._open(mqtt_url, f"{kit}-statewatch-{secrets.token_hex(3)}",
                                                default_protocol="3.1.1")
        self._client.on_connect = lambda c, *_: c.subscribe(subscription("state", kit=kit), 1)
        self._client.on_subscribe = lambda *_: self.ready.set()
        self._client.on_message = self._on_message

    def _on_message(self, _client, _userdata, msg) -> None:
        if not msg.payload:
            return  # a cleared retained state
        try:
            _kit, device, _channel = parse_topic(msg.topic)
            state = decode("state", msg.payload)
        except ContractError as exc:
            log.warning("ignoring a bad state on %s: %s", msg.topic, exc)
            return
        with self._changed:
            self.states[device] = state
            self._changed.notify_all()
        for listener in list(self.listeners):
            try:
                listener(device, state)
            except Exception:  # noqa: BLE001 - a listener's bug must not stop the watch
                log.exception("state listener failed for %s", device)

    def wait_online(self, device: str, timeout: float) -> State | None:
        """The device's state once it is online, or None if it is not within ``timeout`` seconds."""
        with self._changed:
            self._changed.wait_for(lambda: (s := self.states.get(device)) is not None and s.online, timeout)
            s = self.states.get(device)
            return s if s is not None and s.online else None
