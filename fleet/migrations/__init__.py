"""The fleet's schema migrations (Alembic), run at start by fleet.store.Store.open.

``upgrade(engine)`` brings any database to the newest revision:
- an empty database gets every migration, from 0001 (the schema as of the first release) up;
- a database made before migrations existed (the fleet used to call metadata.create_all: its
  tables but no alembic_version) is adopted: the 0001 tables it lacks are created (what
  create_all did at every start) and it is stamped at 0001, keeping its rows, then upgraded;
- a migrated database gets only the revisions it has not had.

Alembic is configured here, from this package's folder, so no alembic.ini is needed at runtime and
the fleet migrates from any working directory. The alembic.ini at the repository root is for
developers writing migrations (docs/migrations.md).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

for _name in ("alembic.runtime.migration", "alembic.runtime.plugins"):
    # Alembic logs at INFO which backend it found and which plugins it loaded (on import), at every
    # start; env.py logs each migration step itself. Unless someone chose these loggers' level.
    if logging.getLogger(_name).level == logging.NOTSET:
        logging.getLogger(_name).setLevel(logging.WARNING)

from alembic import command  # noqa: E402 - after quieting its loggers
from alembic.config import Config  # noqa: E402
from alembic.operations import Operations  # noqa: E402
from alembic.runtime.migration import MigrationContext  # noqa: E402
from alembic.script import ScriptDirectory  # noqa: E402
from sqlalchemy import Connection, Engine, inspect  # noqa: E402

log = logging.getLogger("popkit.fleet")

SCRIPT_LOCATION = Path(__file__).resolve().parent
BASELINE = "0001"
# Any fixed 64-bit number of our own: PostgreSQL advisory locks are per database, keyed by it.
PG_LOCK_KEY = 0x706F706B6974_01  # "popkit", 1


def config(connection: Connection | None = None) -> Config:
    """Alembic's config for this package, optionally bound to an open connection (env.py uses it)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPT_LOCATION))
    cfg.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    return ScriptDirectory.from_config(config()).get_current_head()


@contextmanager
def locked(conn: Connection) -> Iterator[None]:
    """Hold the database's migration lock, with ``conn`` in a transaction, while the body migrates.

    PostgreSQL: a session advisory lock on PG_LOCK_KEY, so of two workers starting at once one
    migrates and the other waits, then finds the schema at head. DDL is transactional there, so a
    failed migration leaves nothing half-done.
    SQLite: BEGIN IMMEDIATE takes the database's write lock for the whole migration (a second
    process waits out busy_timeout), and makes its DDL one transaction. Foreign keys are turned
    off meanwhile: batch mode rebuilds a table by copy, drop and rename, and dropping a parent
    table with foreign_keys=ON would cascade-delete its children's rows.
    """
    backend = conn.dialect.name
    if backend == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_lock({PG_LOCK_KEY})")
        conn.commit()
    elif backend == "sqlite":
        conn.exec_driver_sql("PRAGMA foreign_keys=OFF")  # a no-op inside a transaction: so first
        conn.commit()
    try:
        with conn.begin():
            if backend == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            yield
            if backend == "sqlite":
                bad = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if bad:
                    raise RuntimeError(f"migration left rows breaking foreign keys: {bad[:5]}")
    finally:
        if backend == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_unlock({PG_LOCK_KEY})")
            conn.commit()
        elif backend == "sqlite":
            conn.exec_driver_sql("PRAGMA foreign_keys=ON")
            conn.commit()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database to ``revision`` (adopting a pre-migrations database first)."""
    with engine.connect() as conn, locked(conn):
        cfg = config(conn)
        current = MigrationContext.configure(conn).get_current_revision()
        if current is None and _adopt_legacy(conn, cfg):
            current = BASELINE
        target = ScriptDirectory.from_config(cfg).get_revision(revision).revision
        if current != target:
            log.info("migrating the fleet database from %s to %s", current or "empty", target)
            command.upgrade(cfg, revision)


def downgrade(engine: Engine, revision: str) -> None:
    with engine.connect() as conn, locked(conn):
        command.downgrade(config(conn), revision)


def _adopt_legacy(conn: Connection, cfg: Config) -> bool:
    """Stamp a database made by metadata.create_all (tables, no alembic_version) at the baseline."""
    baseline = ScriptDirectory.from_config(cfg).get_revision(BASELINE).module
    present = set(inspect(conn).get_table_names())
    if not present & set(baseline.TABLES):
        return False  # empty (or someone else's tables only): migrate from scratch
    missing = [name for name in baseline.TABLES if name not in present]
    if missing:
        # An older fleet's create_all made fewer tables, and the next start's create_all added the rest.
        with Operations.context(MigrationContext.configure(conn, opts={"render_as_batch": True})):
            for name in missing:
                baseline.TABLES[name]()
    command.stamp(cfg, BASELINE)
    log.warning("the fleet database predates migrations (made by create_all): kept its rows and "
                "stamped it at revision %s%s", BASELINE,
                f", after creating its missing tables {', '.join(missing)}" if missing else "")
    return True
