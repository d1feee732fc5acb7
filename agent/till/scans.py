"""The scanners in till mode: a product label scanned at a scanner goes onto its station's cart.

A scanner set to till mode publishes what it read on ``popkit/v1/<kit>/<scanner>/till``
(:class:`kits.contract.TillScan`, QoS 0); the agent adds it to the open order of the scan's station
(``Till.add``) and answers on ``.../<scanner>/tilled`` (:class:`kits.contract.TillAnswer`, QoS 0,
never retained): the line was added, or why not (an unknown SKU leaves the order unchanged).

Both are questions asked now, like the door's claims (agent/hub.py): nothing queued for later, so
a clean session. QoS 0 loses messages, so a scanner with no answer yet asks again with the same
question (id, code and scan time): the till answers a repeat from its recent answers without adding
the line again, so one scan is one line however many times it is asked.

A payload that is not a TillScan is counted (``counts["bad:<reason>"]``) and
logged at most once a minute per reason; the scanner then hears nothing and says so itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict

from agent.kitsession import KitSession
from agent.till.errors import TillError
from agent.till.service import Till
from kits.contract import ContractError, TillAnswer, decode, encode, parse_topic, subscription, topic

log = logging.getLogger("popkit.agent.till.scans")

ANSWERS_KEPT = 512  # recent answers for repeated questions: a few seconds of every scanner of a kit


class TillScans(KitSession):
    """Answers the kit's till-mode scanners over the kit's broker (``mqtt_url``)."""

    def __init__(self, kit: str, mqtt_url: str, till: Till, client_id: str | None = None):
        self.kit, self.till = kit, till
        self.counts: Counter[str] = Counter()  # scanned, added, refused:<reason>, bad:<reason>
        self.ready = threading.Event()
        self._last_warn: dict[str, float] = {}
        # (device, id, ts, code) -> the answer given: a scanner asks again for 1.5 s at most, and
        # numbers its questions from 0 at every boot, so the scan time is part of the key.
        self._answered: OrderedDict[tuple[str, int, int, str], bytes] = OrderedDict()
        self._open(mqtt_url, client_id or f"{kit}-till", default_protocol="3.1.1")
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_disconnect = lambda *_: self.ready.clear()
        self._client.on_message = self._on_message

    def _on_connect(self, client, _userdata, _flags, reason_code, _props) -> None:
        if reason_code.is_failure:
            log.error("broker refused the till: %s", reason_code)
            return
        client.subscribe([(subscription("till", kit=self.kit), 0)])

    def _on_subscribe(self, _client, _userdata, _mid, reason_codes, _props) -> None:
        if any(rc.is_failure for rc in reason_codes):
            log.error("broker refused the till's subscription (the agent's ACL needs read %s): %s",
                      subscription("till", kit=self.kit), reason_codes)
            return
        self.ready.set()

    def _on_message(self, client, _userdata, msg) -> None:
        try:
            _kit, device, _channel = parse_topic(msg.topic)
            scan = decode("till", msg.payload)
        except ContractError as exc:
            self._bad(exc.reason, f"{msg.topic}: {exc}")
            return
        key = (device, scan.id, scan.ts, scan.code)
        again = self._answered.get(key)
        if again is not None:
            self.counts["repeated"] += 1
            client.publish(topic(self.kit, device, "tilled"), again, qos=0)
            return
        self.counts["scanned"] += 1
        try:
            res = self.till.add(scan.till, scan.code)
        except TillError as exc:  # a station id the till refuses
            self._bad("bad_station", str(exc))
            answer = TillAnswer(id=scan.id, ok=False, reason="no_till")
        except Exception:  # noqa: BLE001 - the till's disk full or the like: answered, logged, never fatal here
            log.exception("till: adding %r from %s failed", scan.code, device)
            answer = TillAnswer(id=scan.id, ok=False, reason="no_till")
        else:
            answer = TillAnswer(id=scan.id, ok=res.ok, sku=res.sku if res.ok else None,
                                qty=res.qty if res.ok else None, reason=res.reason)
            self.counts["added" if res.ok else f"refused:{res.reason}"] += 1
        body = encode(answer)
        self._answered[key] = body
        while len(self._answered) > ANSWERS_KEPT:
            self._answered.popitem(last=False)
        client.publish(topic(self.kit, device, "tilled"), body, qos=0)

    def _bad(self, reason: str, detail: str) -> None:
        self.counts[f"bad:{reason}"] += 1
        now = time.monotonic()
        if now - self._last_warn.get(reason, -60) >= 60:
            self._last_warn[reason] = now
            log.warning("till ignored a scan (%s): %s", reason, detail)
