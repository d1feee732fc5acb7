"""A venue's lighting in the database: one row per venue, zone, scene, schedule and override
(``venue_docs``), each the JSON of its model. Loaded whole: the compiler and the venue page want
everything at once.

One more row per venue, kind ``revision``: the venue, zones, scenes and schedules as they were before
the last change, so that change can be undone (undoing swaps them: a second undo redoes it).
Overrides are not in it: they are live actions that end by themselves."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import Engine, and_, delete, select

from fleet import db
from fleet.venues.model import Override, Scene, Schedule, Venue, Zone

KINDS = ("zone", "scene", "schedule", "override")
SET_KINDS = ("zone", "scene", "schedule")  # what a publish replaces and an undo restores, with the venue
REVISION = "revision"
_SCHEDULE = TypeAdapter(Schedule)


@dataclass
class VenueDocs:
    venue: Venue
    zones: list[Zone] = field(default_factory=list)
    scenes: list[Scene] = field(default_factory=list)
    schedules: list[Any] = field(default_factory=list)  # OnceWindow | WeeklyWindow | SunWindow
    overrides: list[Override] = field(default_factory=list)  # oldest first: later ones win

    def controllers(self) -> list[str]:
        """Every controller (or agent light) ops gave the venue or a zone of it has an output on: each
        gets the venue's timeline, an empty one when no zone uses it (so it goes dark, not stale)."""
        return sorted({o.controller for z in self.zones for o in z.outputs} | set(self.venue.controllers))

    def args(self) -> tuple:
        """(venue, zones, scenes, schedules, overrides): what compile_timeline and preview take first."""
        return self.venue, self.zones, self.scenes, self.schedules, self.overrides


def parse(kind: str, body: dict) -> Any:
    if kind == "venue":
        return Venue.model_validate(body)
    if kind == "zone":
        return Zone.model_validate(body)
    if kind == "scene":
        return Scene.model_validate(body)
    if kind == "schedule":
        return _SCHEDULE.validate_python(body)
    return Override.model_validate(body)


class VenueStore:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._insert = db.upsert_for(engine)

    def put(self, venue_id: str, kind: str, doc_id: str, body: dict, now_ms: int, by: str | None = None,
            expires_ms: int | None = None) -> None:
        row = dict(venue_id=venue_id, kind=kind, id=doc_id, body=body, expires_ms=expires_ms, updated_ms=now_ms,
                   updated_by=by)
        stmt = self._insert(db.venue_docs).values(**row)
        stmt = stmt.on_conflict_do_update(index_elements=["venue_id", "kind", "id"],
                                          set_={k: row[k] for k in ("body", "expires_ms", "updated_ms", "updated_by")})
        with self.engine.begin() as conn:
            conn.execute(stmt)

    def delete(self, venue_id: str, kind: str, doc_id: str) -> bool:
        v = db.venue_docs.c
        with self.engine.begin() as conn:
            return bool(conn.execute(delete(db.venue_docs).where(
                and_(v.venue_id == venue_id, v.kind == kind, v.id == doc_id))).rowcount)

    def delete_venue(self, venue_id: str) -> bool:
        v = db.venue_docs.c
        with self.engine.begin() as conn:
            return bool(conn.execute(delete(db.venue_docs).where(v.venue_id == venue_id)).rowcount)

    def venue_ids(self) -> list[str]:
        v = db.venue_docs.c
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(select(v.venue_id).where(v.kind == "venue").order_by(v.venue_id))]

    def rows(self, venue_id: str) -> list[dict]:
        v = db.venue_docs.c
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(db.venue_docs).where(v.venue_id == venue_id)
                                                  .order_by(v.kind, v.updated_ms, v.id)).mappings()]

    def load(self, venue_id: str, now_ms: int | None = None) -> VenueDocs | None:
        """The venue with everything it has; overrides over before ``now_ms`` are left out."""
        rows = self.rows(venue_id)
        venue = next((r for r in rows if r["kind"] == "venue"), None)
        if venue is None:
            return None
        docs = VenueDocs(Venue.model_validate(venue["body"]))
        for r in rows:
            if r["kind"] not in KINDS:
                continue
            if r["kind"] == "override" and now_ms is not None and r["expires_ms"] is not None \
                    and r["expires_ms"] <= now_ms:
                continue
            getattr(docs, r["kind"] + "s").append(parse(r["kind"], r["body"]))
        return docs

    # ------------------------------------------------------------ the set a publish writes, and undo

    def current_set(self, venue_id: str) -> dict | None:
        """{"venue", "zones", "scenes", "schedules"} as stored (bodies), None: no venue."""
        return _as_set(self.rows(venue_id))

    def last_revision(self, venue_id: str) -> dict | None:
        """The set as it was before the last change, None: nothing to undo."""
        v = db.venue_docs.c
        with self.engine.connect() as conn:
            row = conn.execute(select(v.body).where(and_(v.venue_id == venue_id, v.kind == REVISION))).first()
        return row[0] if row else None

    def remember(self, venue_id: str, now_ms: int, by: str | None = None) -> None:
        """Keep the current set as the one an undo goes back to (before a single-item change)."""
        before = self.current_set(venue_id)
        if before is not None:
            self.put(venue_id, REVISION, "last", before, now_ms, by=by)

    def replace_set(self, venue_id: str, new: dict, now_ms: int, by: str | None = None) -> None:
        """Store ``new`` (a set: venue, zones, scenes, schedules) in place of the current one, in one
        transaction, keeping the current one as the revision an undo restores."""
        before = self.current_set(venue_id)
        v = db.venue_docs.c
        rows = [("venue", venue_id, new["venue"])]
        for kind in SET_KINDS:
            rows += [(kind, item["id"], item) for item in new[kind + "s"]]
        if before is not None:
            rows.append((REVISION, "last", before))
        with self.engine.begin() as conn:
            for kind in SET_KINDS:
                keep = [item["id"] for item in new[kind + "s"]]
                conn.execute(delete(db.venue_docs).where(and_(v.venue_id == venue_id, v.kind == kind,
                                                              v.id.not_in(keep))))
            for kind, doc_id, body in rows:
                row = dict(venue_id=venue_id, kind=kind, id=doc_id, body=body, expires_ms=None, updated_ms=now_ms,
                           updated_by=by)
                conn.execute(self._insert(db.venue_docs).values(**row).on_conflict_do_update(
                    index_elements=["venue_id", "kind", "id"],
                    set_={k: row[k] for k in ("body", "updated_ms", "updated_by")}))


def _as_set(rows: list[dict]) -> dict | None:
    venue = next((r for r in rows if r["kind"] == "venue"), None)
    if venue is None:
        return None
    out: dict = {"venue": venue["body"]}
    for kind in SET_KINDS:
        out[kind + "s"] = [r["body"] for r in rows if r["kind"] == kind]
    return out
