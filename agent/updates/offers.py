"""The fleet's ``update`` command at the kit's agent, and the offers it makes to the kit's ESP32s
(docs/updates.md, "Delivery through the kit"; docs/protocol.md).

A command (``kits.contract.UpdateCommandArgs``) names a release and one device. The agent:

1. refuses it (ack ``rejected``) when it can never take it: bad args, no release public key,
   a device not of this kit or not of the release's role, an ESP32 release with no update server;
2. fetches the bundle into the kit's cache (agent/updates/fetch.py: once per release, resumed,
   verified), ack ``error`` with the reason when that fails for good;
3. for an ESP32 release, keeps the offer (``<data>/update-offers.json``, written atomically, so
   it survives a restart) and publishes it retained, QoS 1, on ``popkit/v1/<kit>/<device>/update``
   at the kit broker, then acks ``ok``. While the kit is in use (a check-in at any of its doors
   within ``quiet_s``, 10 minutes) the offer waits, logged once, and goes out once the kit is
   quiet; the ack goes with it, so "ok" always means the device was told;
4. for an agent release, starts the self-update (a root unit: ``start_selfupdate``) and acks ``ok``.

An offer is withdrawn (an empty retained payload) once the device's state shows the offered fw
committed (or running it with no news), or a final ``failed``/``rolled_back`` for it. News of a
failure counts only from a state stamped no earlier than 15 minutes before the offer: a state
retained from an earlier try of the same fw does not withdraw a new offer.

After a restart the agent does not know when the last check-in was, so it counts the kit as in
use from its start: a deferred offer waits ``quiet_s`` more, never less.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from agent.kitsession import KitSession
from agent.updates.cache import UpdateCache
from agent.updates.fetch import BundleFetcher, FetchError
from kits.contract import (Command, ContractError, State, UpdateCommandArgs, UpdateOffer, UpdateReport, decode,
                           encode, parse_topic, subscription, topic)
from kits.manifest import KitManifest
from plumbing.files import write_atomic

log = logging.getLogger("popkit.agent.updates")

_UNSET_HOST, _UNSET_PORT = "unset", 1  # an offer's server before it listens: replaced when it goes out
QUIET_S = 600.0  # the kit is in use while a door checked someone in within this
NEWS_SLACK_MS = 15 * 60 * 1000  # device clocks drift; a state older than this before the offer is old news
OFFERS_FILE = "update-offers.json"
RESULT_FILE = "agent-update.json"  # in <data>/updates/: the self-update's outcome (selfupdate.py --result)
SELFUPDATE_UNIT = "popkit-agent-update@{version}.service"
FINAL = ("committed", "failed", "rolled_back")

Ack = Callable[[str, str, str, "str | None"], object]  # (device, cmd id, status, detail)


def systemd_selfupdate(version: str, _bundle: Path) -> None:
    """The self-update as root, outliving this agent: deploy/popkit-agent-update@.service, which the
    polkit rule lets the popkit user start (that unit name pattern only). --no-block: the unit's
    restart of this agent must not wait for this call."""
    subprocess.run(["systemctl", "start", "--no-block", SELFUPDATE_UNIT.format(version=version)],
                   check=True, capture_output=True, text=True, timeout=30)


def agent_update_report(data: Path) -> UpdateReport | None:
    """The last self-update's outcome for the agent's state: a rollback or a failure, with why and
    the release concerned. A commit needs no news: the agent's fw is the new version."""
    try:
        result = json.loads((data / "updates" / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return None
    status = result.get("status") if isinstance(result, dict) else None
    if status not in ("rolled_back", "failed"):
        return None
    version = result.get("version")
    return UpdateReport(state=status, why=str(result.get("reason") or status)[:120],
                        fw=f"agent-{version}"[:40] if isinstance(version, str) else None)


class UpdateOffers(KitSession):
    def __init__(self, manifest: KitManifest, mqtt_url: str, data: Path, cache: UpdateCache, ack: Ack, *,
                 host: str | None = None, port: int | None = None, serve: bool | None = None,
                 fetcher: BundleFetcher | None = None,
                 quiet_s: float = QUIET_S, start_selfupdate: Callable[[str, Path], None] = systemd_selfupdate,
                 clock: Callable[[], float] = time.time):
        self.manifest, self.kit, self.data, self.cache, self.ack = manifest, manifest.id, Path(data), cache, ack
        self.host, self.port = host, port  # the update server's own listen address; None: not listening
        # An update server is configured (POPKIT_UPDATE_LISTEN), listening or not yet (the kit's
        # interface may come up after the agent): offers wait for it rather than being refused.
        self.serve = bool(host) if serve is None else serve
        self.fetcher = fetcher or BundleFetcher(cache)
        self.quiet_s, self.start_selfupdate, self.clock = quiet_s, start_selfupdate, clock
        self.devices = {s.id: s for s in manifest.devices if not s.hosted}
        self._lock = threading.Lock()
        self._path = self.data / OFFERS_FILE
        self.offers: dict[str, dict] = self._load()  # device -> {offer, cmd, published, acked, deferred}
        self.last_use = clock()  # unknown after a start: in use until a whole quiet window has passed
        self.last_door: str | None = None
        self.states: dict[str, State] = {}  # device -> its latest state: an offer that went out late is checked too
        self.counts = {"commands": 0, "rejected": 0, "errors": 0, "published": 0, "withdrawn": 0, "deferred": 0,
                       "bad": 0}
        self.connected = threading.Event()
        self._open(mqtt_url, f"{self.kit}-updates-{secrets.token_hex(3)}", default_protocol="3.1.1")
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = lambda *_: self.connected.clear()
        self._client.on_message = self._on_message

    # ------------------------------------------------------------ the fleet's command (the agent's loop)

    async def handle(self, cmd: Command) -> tuple[str, str | None] | None:
        """(status, detail) to ack now, or None: the ack goes out with the offer (``self.ack``)."""
        self.counts["commands"] += 1
        try:
            args = UpdateCommandArgs.model_validate(cmd.args)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "args"
            return self._reject(f"update: bad args: {where}: {first['msg']}")
        role, _, version = args.release.partition("-")
        if self.cache.public_key is None:
            return self._reject("no release public key is configured (POPKIT_RELEASE_PUBKEY): bundles are refused")
        if role == "agent":
            if args.device != self.manifest.agent:
                return self._reject(f"an agent release is for {self.manifest.agent}, not {args.device}")
        else:
            spec = self.devices.get(args.device)
            if spec is None:
                return self._reject(f"{args.device} is not an ESP32 of kit {self.kit}")
            if spec.role != role:
                return self._reject(f"{args.device} is a {spec.role}, not a {role}")
            if not self.serve:
                return self._reject("no update server on the kit network (POPKIT_UPDATE_LISTEN is not set)")
        try:
            folder = await self.fetcher.fetch(args, deadline_ms=cmd.expires)
        except FetchError as exc:
            self.counts["errors"] += 1
            log.error("update %s for %s: %s", args.release, args.device, exc)
            return "error", str(exc)[:200]
        if role == "agent":
            return await self._selfupdate(version, folder)
        offer = UpdateOffer(id=cmd.id, release=args.release, fw=args.fw, host=self.host or _UNSET_HOST,
                            port=self.port or _UNSET_PORT, rollback=args.downgrade, ts=int(self.clock() * 1000))
        with self._lock:  # host and port are the server's as it listens when the offer goes out
            self.offers[args.device] = {"offer": offer.model_dump(mode="json"), "cmd": cmd.id,
                                        "agent": self.manifest.agent, "published": False, "acked": False,
                                        "deferred": False}
            self._save()
        self.poll()
        return None

    def _reject(self, why: str) -> tuple[str, str]:
        self.counts["rejected"] += 1
        log.warning("update command rejected: %s", why)
        return "rejected", why[:200]

    async def _selfupdate(self, version: str, folder: Path) -> tuple[str, str]:
        (self.data / "updates" / RESULT_FILE).unlink(missing_ok=True)  # the last outcome is old news now
        try:
            await asyncio.to_thread(self.start_selfupdate, version, folder)
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", None) or str(exc)
            self.counts["errors"] += 1
            return "error", f"self-update {version} did not start: {str(detail).strip()[:150]}"
        log.info("self-update to agent %s started", version)
        return "ok", f"self-update to {version} started"

    # ------------------------------------------------------------ offers out

    def serving(self, host: str, port: int) -> None:
        """The update server listens now (it could not at the agent's start): waiting offers go out."""
        self.host, self.port = host, port
        self.poll()

    def in_use(self) -> str | None:
        """Why offers wait now, or None when the kit is quiet."""
        ago = self.clock() - self.last_use
        if ago >= self.quiet_s:
            return None
        where = f"a check-in at {self.last_door}" if self.last_door else "the agent's start"
        return f"kit in use: {where} {ago:.0f}s ago (offers wait for {self.quiet_s:.0f}s without a check-in)"

    def poll(self) -> None:
        """Publish every offer not yet out, unless the kit is in use (then say so, once per offer);
        ack each command whose offer is out (the ack is in the link's outbox before we note it sent)."""
        if not self.connected.is_set():
            return  # on_connect publishes them
        busy = self.in_use()
        if busy is None and not (self.host and self.port):
            busy = "the update server is not listening yet"
        changed = False
        with self._lock:
            for device, entry in self.offers.items():
                if not entry["published"]:
                    if busy is not None:
                        if not entry["deferred"]:
                            entry["deferred"] = True
                            self.counts["deferred"] += 1
                            log.info("offer of %s to %s deferred: %s", entry["offer"]["release"], device, busy)
                        continue
                    self._publish(device, entry)
                    changed = True
                if not entry["acked"]:
                    self.ack(entry["agent"], entry["cmd"], "ok", f"offered {entry['offer']['release']} to {device}")
                    entry["acked"] = changed = True
            if changed:
                self._save()
            out = [d for d, e in self.offers.items() if e["published"]]
        for device in out:  # a device that already runs (or gave up on) what it was offered while it waited
            self._settle(device)

    def _publish(self, device: str, entry: dict) -> None:
        assert self.host and self.port
        entry["offer"].update(host=self.host, port=self.port)
        offer = UpdateOffer.model_validate(entry["offer"])
        self._client.publish(topic(self.kit, device, "update"), encode(offer), qos=1, retain=True)
        if not entry["published"]:
            self.counts["published"] += 1
            log.info("offered %s to %s (%s:%d)", offer.release, device, offer.host, offer.port)
        entry["published"] = True

    def withdraw(self, device: str, why: str) -> None:
        with self._lock:  # published before the entry goes: whoever sees it gone sees it withdrawn at the broker next
            entry = self.offers.get(device)
            if entry is None:
                return
            self._client.publish(topic(self.kit, device, "update"), b"", qos=1, retain=True)
            del self.offers[device]
            self._save()
        self.counts["withdrawn"] += 1
        log.info("offer of %s to %s withdrawn: %s", entry["offer"]["release"], device, why)

    async def run(self, period_s: float = 5.0) -> None:
        """The deferred offers go out once the kit is quiet."""
        while True:
            await asyncio.to_thread(self.poll)
            await asyncio.sleep(period_s)

    # ------------------------------------------------------------ the kit's broker (network thread)

    def _on_connect(self, client, _userdata, _flags, reason_code, _props) -> None:
        if reason_code.is_failure:
            log.error("broker refused the update offers' session: %s", reason_code)
            return
        client.subscribe([(subscription("event", kit=self.kit), 1), (subscription("state", kit=self.kit), 1)])
        self.connected.set()
        with self._lock:  # what the broker holds may be gone (a broker without persistence): ours is the truth
            for device, entry in self.offers.items():
                if entry["published"] and self.host and self.port:
                    self._publish(device, entry)
        threading.Thread(target=self.poll, daemon=True).start()  # not on the network thread: it acks

    def _on_message(self, _client, _userdata, msg) -> None:
        if not msg.payload:
            return
        try:
            _kit, device, channel = parse_topic(msg.topic)
            if channel == "event":
                self._event(device, msg.payload)
            elif channel == "state":
                self._state(device, msg.payload)
        except ContractError as exc:
            self.counts["bad"] += 1
            log.warning("ignored %s: %s", msg.topic, exc)

    def _event(self, device: str, payload: bytes) -> None:
        if b'"checkin"' not in payload:
            return  # only a door's check-in says the kit is in use; the rest is not worth decoding
        event = decode("event", payload)
        if event.kind != "checkin":
            return
        now = self.clock()
        if event.data.get("clock") != "unset" and event.ts < (now - self.quiet_s) * 1000:
            return  # a door's outbox sending an old check-in again (after an outage): not use now
        self.last_use = max(self.last_use, now)  # our clock: a door's may be unset
        self.last_door = device

    def _state(self, device: str, payload: bytes) -> None:
        state = decode("state", payload)
        self.states[device] = state
        self._settle(device)

    def _settle(self, device: str) -> None:
        """Withdraw the device's offer if its latest state says it is done with it."""
        with self._lock:
            entry = self.offers.get(device)
        state = self.states.get(device)
        if entry is None or not entry["published"] or state is None:
            return
        fw, offered_ms = entry["offer"]["fw"], entry["offer"]["ts"]
        news = state.update
        if state.fw == fw and (news is None or news.state == "committed"):
            self.withdraw(device, f"{device} runs {fw}")
        elif (news is not None and news.state in FINAL and (news.fw or state.fw) == fw
              and state.ts >= offered_ms - NEWS_SLACK_MS):
            self.withdraw(device, f"{device} says {news.state} for {fw}" + (f": {news.why}" if news.why else ""))

    # ------------------------------------------------------------ the pending file

    def _load(self) -> dict[str, dict]:
        try:
            raw = json.loads(self._path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("%s unreadable (%s): pending offers start afresh", self._path, exc)
            return {}
        offers = {}
        for device, entry in (raw.get("offers") or {}).items() if isinstance(raw, dict) else ():
            try:
                UpdateOffer.model_validate(entry["offer"])
                offers[device] = {"offer": entry["offer"], "cmd": str(entry["cmd"]), "agent": str(entry["agent"]),
                                  "published": bool(entry["published"]), "acked": bool(entry["acked"]),
                                  "deferred": False}
            except (KeyError, TypeError, ValidationError):
                log.error("%s: the offer to %r is not one: dropped", self._path, device)
        return offers

    def _save(self) -> None:
        write_atomic(self._path, json.dumps({"offers": self.offers}, sort_keys=True), private=False)
