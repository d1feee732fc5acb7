"""The swarm's side of field updates (docs/updates.md, issue 18): each simulated kit's agent answers
the fleet's ``update`` command, and its simulated ESP32 reports the update in its retained state.

What a real kit does, and what the swarm does instead (the fleet sees the same wire):

- The agent fetches the bundle from the fleet once per kit and release, checks it, offers it to the
  device (retained, kit-local ``update`` topic) and acks ``ok``; here the fetch is a delay
  (``fetch_s``), once per kit and release however many commands name it, and the offer is handed to
  the simulated device in-process: the kit network is this process, and the update topic never
  reaches the fleet's broker anyway.
- Bad args, or a device not in the kit: ``rejected`` with the reason. A command id already seen is
  answered again, never run twice; one past its expiry is answered ``expired``.
- While the kit is in use (a check-in at any of its doors within ``in_use_s``) the agent defers the
  offer (and its ack) until the kit is quiet, as the real agent does.
- The ESP32 reports ``downloading`` (``download_s``), then either ``failed`` ("sha256 mismatch") or
  switches and reports ``trial`` with the new fw (``trial_s``), then ``committed``, or
  ``rolled_back`` ("never healthy in 300 s") back on its old fw. Which way a device goes is decided
  by ``fail_p`` and ``rollback_p`` from a hash of (seed, device, release): the same run gives the
  same outcome, and a bench can know it beforehand (``UpdateBehaviour.outcome``). The switch's
  reboot is not simulated (same boot, same session): the fleet only reads the state's news.
- An agent release (``device`` = the agent) updates the agent itself: its state's fw becomes the
  release's (committed), or says rolled_back with why.

Every update command an agent takes in is logged with its wall-clock time (``UpdateLog.commands``),
so a bench measures what kits received, not what the fleet believes it sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydantic import ValidationError

from kits.contract import ContractError, UpdateCommandArgs, decode

if TYPE_CHECKING:
    from simulators.swarm import SimDevice, Swarm

log = logging.getLogger("popkit.sim.swarm")

FAIL_WHY = "sha256 mismatch"
ROLLBACK_WHY = "never healthy in 300 s"
AGENT_ROLLBACK_WHY = "health check failed: the link never came up in 120 s"
PLAIN_ACTIONS = ("identify", "selftest")  # what the real agent answers for itself ("ok", its self-test)


@dataclass(frozen=True)
class UpdateBehaviour:
    """How the swarm's kits take an update. Delays are (min, max) seconds, drawn uniformly."""

    fail_p: float = 0.0  # share of device updates that fail during the download ("sha256 mismatch")
    rollback_p: float = 0.0  # share that switch, then roll back from their trial
    fetch_s: tuple[float, float] = (1.0, 3.0)  # the kit's fetch of a bundle from the fleet
    download_s: tuple[float, float] = (2.0, 6.0)  # an ESP32's download from the kit's cache and its switch
    trial_s: tuple[float, float] = (2.0, 4.0)  # the trial, until committed or rolled back
    in_use_s: float = 600.0  # the agent defers an offer this long after a check-in at its kit
    seed: int = 0

    def __post_init__(self):
        if not (0 <= self.fail_p and 0 <= self.rollback_p and self.fail_p + self.rollback_p <= 1):
            raise ValueError("fail_p and rollback_p: shares from 0 to 1, together at most 1")
        for name in ("fetch_s", "download_s", "trial_s"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"{name}: (min, max) seconds, 0 <= min <= max")

    def outcome(self, device: str, release: str) -> str:
        """committed, failed or rolled_back: what ``device`` will make of ``release`` in this swarm."""
        digest = hashlib.sha256(f"{self.seed}:{device}:{release}".encode()).digest()
        r = int.from_bytes(digest[:8], "big") / 2**64
        if r < self.fail_p:
            return "failed"
        if r < self.fail_p + self.rollback_p:
            return "rolled_back"
        return "committed"


@dataclass(frozen=True)
class CommandSeen:
    kit: str
    agent: str
    cmd_id: str
    action: str
    release: str | None
    device: str | None
    received_ms: int  # wall clock, when the agent took it in


@dataclass
class UpdateLog:
    """What the swarm's kits saw and did (the loop's thread writes; other threads only read)."""

    commands: list[CommandSeen] = field(default_factory=list)  # every command an agent took in (first copy)
    duplicates: int = 0  # copies of a command id already taken
    bad_commands: int = 0  # not a command the contract knows (no ack possible without an id)
    acks: Counter = field(default_factory=Counter)  # status -> acks sent
    fetches: int = 0  # bundles fetched into a kit's cache: once per kit and release
    deferred: int = 0  # offers held back because the kit was in use
    reports: Counter = field(default_factory=Counter)  # update state -> reports made by devices
    final: dict[str, tuple[str, str]] = field(default_factory=dict)  # device -> (final state, release)


class SwarmUpdates:
    """The kits' agents and ESP32s of one Swarm taking updates; runs on the swarm's loop."""

    def __init__(self, swarm: "Swarm", behaviour: UpdateBehaviour):
        self.swarm, self.behaviour = swarm, behaviour
        self.rng = random.Random(f"updates-{behaviour.seed}")  # not the swarm's rng: its telemetry stays as it was
        self.log = UpdateLog()
        self.by_id: dict[str, SimDevice] = {d.id: d for d in swarm.devices}
        self.kit_devices: dict[str, set[str]] = {}
        for d in swarm.devices:
            self.kit_devices.setdefault(d.kit, set()).add(d.id)
        self.last_checkin: dict[str, float] = {}  # kit -> loop time of its last check-in
        self._cache: dict[tuple[str, str], asyncio.Future | None] = {}  # (kit, release) -> fetching, or None: cached
        self._answers: dict[tuple[str, str], tuple[str, str | None] | None] = {}  # (agent, cmd id) -> ack, None: running
        self._failed_offers: set[tuple[str, str]] = set()  # (device, release) tried and failed: not again
        self._busy: set[str] = set()  # devices mid-update
        self.tasks: set[asyncio.Task] = set()

    def delay(self, span: tuple[float, float]) -> float:
        return self.rng.uniform(*span)

    # ------------------------------------------------------------ the agent

    def on_command(self, agent: "SimDevice", payload: bytes) -> None:
        """A fleet command on the agent's ``cmd`` topic."""
        try:
            cmd = decode("cmd", payload)
        except ContractError as exc:
            self.log.bad_commands += 1
            self.swarm.warn("cmd", f"{agent.id}: a command the contract refuses ({exc}): {payload[:120]!r}")
            return
        key = (agent.id, cmd.id)
        if key in self._answers:  # a copy (the fleet resends what is unanswered when a device comes back)
            self.log.duplicates += 1
            answer = self._answers[key]
            if answer is not None:
                self.log.acks[answer[0]] += 1
                agent.ack(cmd.id, *answer)
            return
        args = cmd.args if cmd.action == "update" else {}
        self.log.commands.append(CommandSeen(agent.kit, agent.id, cmd.id, cmd.action, args.get("release"),
                                             args.get("device"), int(time.time() * 1000)))
        if cmd.expires < time.time() * 1000:
            self._answer(agent, cmd.id, "expired", None)
        elif cmd.action in PLAIN_ACTIONS:
            self._answer(agent, cmd.id, "ok", "ready")
        elif cmd.action != "update":
            self._answer(agent, cmd.id, "rejected", f"the agent does not know {cmd.action!r} "
                                                    f"(selftest, identify, update)")
        else:
            self._answers[key] = None
            self._spawn(self._update(agent, cmd.id, cmd.args))

    def _answer(self, agent: "SimDevice", cmd_id: str, status: str, detail: str | None) -> None:
        self._answers[(agent.id, cmd_id)] = (status, detail)
        self.log.acks[status] += 1
        agent.ack(cmd_id, status, detail)

    async def _update(self, agent: "SimDevice", cmd_id: str, raw: dict) -> None:
        try:
            args = UpdateCommandArgs.model_validate(raw)
        except ValidationError as exc:
            e = exc.errors(include_url=False)[0]
            where = ".".join(str(x) for x in e["loc"]) or "args"
            self._answer(agent, cmd_id, "rejected", f"bad args: {where}: {e['msg']}"[:200])
            return
        if args.device not in self.kit_devices.get(agent.kit, ()):
            self._answer(agent, cmd_id, "rejected", f"{args.device} is not in kit {agent.kit}")
            return
        await self._fetch(agent.kit, args.release)
        device = self.by_id[args.device]
        if device is agent:  # an agent release: the self-update starts, then the ack
            self._answer(agent, cmd_id, "ok", f"self-update to {args.release} started")
            await self._progress(device, args.release, args.fw, download=False)
            return
        while (quiet_at := self.last_checkin.get(agent.kit, -1e18) + self.behaviour.in_use_s) > self.swarm.loop.time():
            self.log.deferred += 1
            await asyncio.sleep(quiet_at - self.swarm.loop.time() + 0.01)
        self._answer(agent, cmd_id, "ok", f"offered {args.release} to {args.device}")
        await self._progress(device, args.release, args.fw, download=True)

    async def _fetch(self, kit: str, release: str) -> None:
        """The bundle into the kit's cache, once per kit and release: later commands wait for the first fetch."""
        key = (kit, release)
        if key in self._cache:
            pending = self._cache[key]
            if pending is not None:
                await asyncio.shield(pending)
            return
        fut = self.swarm.loop.create_future()
        self._cache[key] = fut
        try:
            await asyncio.sleep(self.delay(self.behaviour.fetch_s))
            self.log.fetches += 1
        finally:
            self._cache[key] = None
            fut.set_result(None)

    # ------------------------------------------------------------ the ESP32 (or the agent itself)

    async def _progress(self, device: "SimDevice", release: str, fw: str, download: bool) -> None:
        """One device through its update, each step in its retained state."""
        if device.fw == fw.encode() or (device.id, release) in self._failed_offers or device.id in self._busy:
            return  # runs it already, tried it and failed (a device does not retry a failed offer), or busy
        role = release.rsplit("-", 1)[0]
        if role != device.role:
            self._report(device, release, "failed", f"wrong role: {role} for a {device.role}", fw)
            return
        self._busy.add(device.id)
        try:
            outcome = self.behaviour.outcome(device.id, release)
            if download:
                self._report(device, release, "downloading", None, fw)
                await asyncio.sleep(self.delay(self.behaviour.download_s))
                if outcome == "failed":
                    self._report(device, release, "failed", FAIL_WHY, fw)
                    return
            old = device.fw
            if download:  # an ESP32 switched: the new slot runs, on trial
                device.fw = fw.encode()
                self._report(device, release, "trial", None, fw)
            # (The agent installs beside itself, switches, restarts and is health-checked: no trial to report.)
            await asyncio.sleep(self.delay(self.behaviour.trial_s))
            if outcome == "committed":
                device.fw = fw.encode()
                self._report(device, release, "committed", None, fw)
            else:  # a failed agent release also ends here: its health check failed, so it rolls back
                device.fw = old
                self._report(device, release, "rolled_back", ROLLBACK_WHY if download else AGENT_ROLLBACK_WHY, fw)
        finally:
            self._busy.discard(device.id)

    def _report(self, device: "SimDevice", release: str, state: str, why: str | None, fw: str) -> None:
        news = {"state": state, "fw": fw}
        if why:
            news["why"] = why
        self.log.reports[state] += 1
        if state in ("committed", "failed", "rolled_back"):
            self.log.final[device.id] = (state, release)
            if state != "committed":
                self._failed_offers.add((device.id, release))
        device.set_update(json.dumps(news, separators=(",", ":")).encode())

    # ------------------------------------------------------------ plumbing

    def _spawn(self, coro) -> None:
        task = self.swarm.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("swarm update task failed: %r", task.exception())

    def cancel(self) -> None:
        for task in list(self.tasks):
            task.cancel()
