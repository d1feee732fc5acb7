"""Rollouts stepped: the planner's answer (fleet/updates/model.py) applied to the store.

``step`` is what a fleet worker runs every few seconds (under a lease, so one worker steps at a
time; the store's conditional updates keep two from offering one device twice anyway). Each offer
is recorded with the device's update as a dict: what the kit's agent is sent, as an ``update``
command (fleet/updates/worker.py turns each offer into one). A device's reports come back through
its state and its agent's acks (``UpdateStore.states_reported``, ``acks_reported``).
"""

from __future__ import annotations

from sqlalchemy import select

from fleet import db
from fleet.db import now_ms
from fleet.updates.model import DEFAULT_LEAD_MS, Plan, Release, Rollout, Target, plan, running_version
from fleet.updates.store import UpdateConflict


class UpdateDelivery:
    def __init__(self, store, lead_ms: int = DEFAULT_LEAD_MS):
        self.store = store  # fleet.store.Store: the registry's devices and windows, and store.updates
        self.lead_ms = lead_ms

    def targets(self, role: str, target: Target) -> list[tuple[str, str]]:
        """(device, kit) of every registered device of ``role`` the target names."""
        return sorted((r.id, r.kit_id) for r in self.store.registry.device_refs().values()
                      if r.role == role and target.matches(r.id, r.kit_id))

    def running(self) -> dict[str, str | None]:
        """device -> the fw it last reported running (its retained state)."""
        with self.store.engine.connect() as conn:
            return dict(conn.execute(select(db.devices.c.id, db.devices.c.fw)).all())

    def create(self, release: Release, target: Target, groups: tuple[str, ...], success_threshold: float,
               error_threshold: float, rate_per_min: int, by: str, downgrade: bool = False) -> Rollout | None:
        """A rollout of ``release`` to the target's devices. A device that runs a newer version is left
        out unless ops ask for a downgrade (a rollback); one that runs the release already counts as
        committed. Raises UpdateConflict (the reason) when the rollout cannot be made."""
        missing = [d for d in target.devices if d not in {x for x, _k in self.targets(release.role, Target())}]
        if missing:
            raise UpdateConflict(f"device {missing[0]} is not a registered {release.role}")
        fw, version = self.running(), release_version(release)
        devices: list[tuple[str, str]] = []
        newer: list[tuple[str, str]] = []
        for d, k in self.targets(release.role, target):
            v = running_version(fw.get(d), release.role)
            (newer if v is not None and v > version and not downgrade else devices).append((d, k))
        if newer and not devices:
            raise UpdateConflict(f"every target device runs a version newer than {release.version} "
                                 f"({newer[0][0]}: {fw[newer[0][0]]}): a rollback needs downgrade")
        return self.store.updates.create_rollout(release, target, groups, success_threshold, error_threshold,
                                                 rate_per_min, devices, by, downgrade=downgrade,
                                                 running={d for d, _k in devices if fw.get(d) == release.fw})

    def plan(self, rollout: Rollout, now: int | None = None) -> tuple[Plan, list]:
        """The planner's answer for ``rollout`` now, and its device updates (what the API shows)."""
        now = now if now is not None else now_ms()
        updates = self.store.updates.updates(rollout.id)
        windows = self.store.updates.windows(self.store.registry.kit_infos(), now)
        return plan(rollout, updates, windows, now, self.lead_ms), updates

    def step(self, now: int | None = None) -> list[dict]:
        """Advance every running rollout once; returns the offers made (to publish to the kits' agents)."""
        now = now if now is not None else now_ms()
        out = []
        infos = windows = None
        for rollout in self.store.updates.rollouts(("running",)):
            if infos is None:  # once a step, for every rollout: the kits' windows, holds and check-ins
                infos = self.store.registry.kit_infos()
                windows = self.store.updates.windows(infos, now)
            updates = self.store.updates.updates(rollout.id)
            p = plan(rollout, updates, windows, now, self.lead_ms)
            release = self.store.updates.release(rollout.release)
            digest = self.store.updates.manifest_sha256(rollout.release)
            by_device = {u.device: u for u in updates}
            offers = {d: offer(rollout, release, digest, by_device[d].kit, infos.get(by_device[d].kit), d, now)
                      for d in p.offer}
            for d in self.store.updates.apply_plan(rollout, p, offers, now):
                out.append(offers[d])
        return out


def offer(rollout: Rollout, release: Release, manifest_sha256: str, kit: str, info, device: str, now: int) -> dict:
    """What the kit's agent is told for one device: fetch (once per kit) and serve this release to it.
    The agent checks the bundle's signature itself; the digest lets it match its cached copy."""
    return {"kind": "update_offer", "rollout": rollout.id, "release": release.id, "role": release.role,
            "version": release.version, "fw": release.fw, "size": release.size, "key_id": release.key_id,
            "manifest_sha256": manifest_sha256, "kit": kit, "agent": info.agent if info else None,
            "device": device, "downgrade": rollout.downgrade, "ts": now}


def release_version(release: Release) -> tuple[int, int, int]:
    return running_version(release.fw, release.role) or (0, 0, 0)
