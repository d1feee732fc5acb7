"""An MQTT session of the agent's own at the kit broker, for a part with one job (the door hub,
the state watch, the kit's ticket list, the kit's time).

Each part has a connection of its own rather than sharing the outbox link's: its traffic is
kit-local (never bridged, never receipted), and a slow part never holds another's messages back.
``clean_start`` says whether the broker keeps what arrives for the part while the agent is down
(the hub's claims and the crew's revocation requests: False) or whether the part only wants what
is current (states, the time: True). paho's own thread reconnects; the part sets its callbacks.
"""

from __future__ import annotations

from plumbing.mqtt import client_for, session_kwargs

KEEPALIVE_S = 15  # a kit broker on the same Pi: a dead connection is found in seconds


class KitSession:
    clean_start = True

    def _open(self, mqtt_url: str, client_id: str, **options) -> None:
        self._client, self._target = client_for(mqtt_url, client_id, **options)

    def start(self):
        self._client.connect_async(self._target.host, self._target.port, keepalive=KEEPALIVE_S,
                                   **session_kwargs(self._client, clean_start=self.clean_start))
        self._client.loop_start()
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
