"""Schema migrations (fleet/migrations): on SQLite and PostgreSQL, against real databases.

test_models_and_migrations_agree_* is the guard for everyone editing fleet/db.py: it fails until
the change has a migration (docs/migrations.md says how to write one).
"""

from __future__ import annotations

import logging
import threading

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext

from fleet import db, migrations
from fleet.store import Store

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def db_url(request, tmp_path):
    """An empty database on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fleet.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def engine(db_url):
    e = db.make_engine(db_url)
    yield e
    e.dispose()


def schema_diff(engine: sa.Engine, metadata: sa.MetaData = db.metadata) -> list:
    """What autogenerate would write to make the database match ``metadata``: [] when they agree."""
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        return compare_metadata(ctx, metadata)


def revision(engine: sa.Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def table_names(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def create_all_as_before_migrations(engine: sa.Engine, skip: tuple[str, ...] = ()) -> None:
    """What the fleet's create_all made before migrations: the baseline (0001) tables, none added since."""
    from alembic.migration import MigrationContext
    from alembic.operations import Operations
    from alembic.script import ScriptDirectory

    # 0001's own table definitions, not today's models: a column added since (commands.requested_by,
    # 0004) must be missing here, as it was in those databases.
    baseline = ScriptDirectory.from_config(migrations.config()).get_revision(migrations.BASELINE).module.TABLES
    with engine.begin() as conn, Operations.context(MigrationContext.configure(conn)):
        for name, make in baseline.items():
            if name not in skip:
                make()


def _seed_rows(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(db.kits.insert().values(id="k1", name="Kit one", created_ms=1))
        conn.execute(db.devices.insert().values(id="d1", kit_id="k1", role="scanner", model="m", online=True,
                                                received=5, duplicates=0))
        conn.execute(db.desired_config.insert().values(device_id="d1", version=3, ts_ms=2, data={"a": 1}))


def test_models_and_migrations_agree_sqlite(tmp_path):
    """Upgrading an empty SQLite database gives exactly fleet.db.metadata: else db.py changed without a migration."""
    engine = db.make_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    migrations.upgrade(engine)
    assert revision(engine) == migrations.head()
    assert schema_diff(engine) == [], "fleet/db.py and fleet/migrations differ: add a migration (docs/migrations.md)"
    engine.dispose()


def test_models_and_migrations_agree_postgres(pg_url):
    """The same on PostgreSQL, whose types and reflection differ from SQLite's."""
    engine = db.make_engine(pg_url)
    migrations.upgrade(engine)
    assert revision(engine) == migrations.head()
    assert schema_diff(engine) == [], "fleet/db.py and fleet/migrations differ: add a migration (docs/migrations.md)"
    engine.dispose()


def test_the_agreement_check_sees_a_model_change(tmp_path):
    """compare_metadata is not vacuous: a column, an index or a table more in the models shows."""
    engine = db.make_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    migrations.upgrade(engine)
    changed = sa.MetaData()
    for table in db.metadata.sorted_tables:
        table.to_metadata(changed)
    changed.tables["kits"].append_column(sa.Column("venue", sa.String(80)))
    sa.Index("ix_streams_last", changed.tables["streams"].c.last_ms)
    sa.Table("venues", changed, sa.Column("id", sa.Integer, primary_key=True))
    kinds = {d[0] if isinstance(d, tuple) else d[0][0] for d in schema_diff(engine, changed)}
    assert kinds == {"add_column", "add_index", "add_table"}
    engine.dispose()


def test_store_open_migrates_an_empty_database(db_url):
    store = Store.open(db_url)
    try:
        assert revision(store.engine) == migrations.head()
        assert table_names(store.engine) == set(db.metadata.tables) | {"alembic_version"}
    finally:
        store.close()


def test_create_all_database_is_stamped_not_recreated(db_url, caplog):
    """A database from before migrations (create_all, no alembic_version) keeps its rows and is stamped."""
    engine = db.make_engine(db_url)
    create_all_as_before_migrations(engine)
    _seed_rows(engine)
    engine.dispose()

    with caplog.at_level(logging.INFO, logger="popkit.fleet"):
        store = Store.open(db_url)
    try:
        assert revision(store.engine) == migrations.head()
        assert "predates migrations" in caplog.text and "stamped it at revision 0001" in caplog.text
        assert "upgraded to 0001" not in caplog.text  # stamped, not run
        assert [k["id"] for k in store.devices.list_kits()] == ["k1"]
        assert store.devices.get_device("d1")["received"] == 5
        assert store.config.desired("d1") is not None
        assert schema_diff(store.engine) == []
    finally:
        store.close()

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="popkit.fleet"):
        Store.open(db_url).close()  # the next start has nothing to do
    assert "predates" not in caplog.text and "migrating" not in caplog.text


def test_old_create_all_database_gets_the_tables_it_lacked(db_url):
    """A database from before commands and desired config existed: create_all added tables at start; so do we."""
    engine = db.make_engine(db_url)
    create_all_as_before_migrations(engine, skip=("commands", "desired_config"))
    with engine.begin() as conn:
        conn.execute(db.kits.insert().values(id="k1", name="Kit one", created_ms=1))
    migrations.upgrade(engine)
    try:
        assert revision(engine) == migrations.head()
        assert schema_diff(engine) == []
        with engine.connect() as conn:
            assert conn.execute(sa.select(db.kits.c.name)).scalar_one() == "Kit one"
    finally:
        engine.dispose()


def test_downgrade_to_base_and_upgrade_again(engine):
    migrations.upgrade(engine)
    _seed_rows(engine)
    migrations.downgrade(engine, "base")
    assert revision(engine) is None
    assert table_names(engine) <= {"alembic_version"}
    migrations.upgrade(engine)
    assert revision(engine) == migrations.head()
    assert schema_diff(engine) == []


def test_concurrent_starts_migrate_once(db_url, caplog):
    """Workers starting together: one migrates (under the advisory lock / SQLite's write lock), the rest wait."""
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def worker() -> None:
        engine = db.make_engine(db_url)
        try:
            start.wait()
            migrations.upgrade(engine)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            engine.dispose()

    with caplog.at_level(logging.INFO, logger="popkit.fleet"):
        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert errors == []
    assert caplog.text.count("upgraded to 0001") == 1
    engine = db.make_engine(db_url)
    assert revision(engine) == migrations.head()
    assert schema_diff(engine) == []
    engine.dispose()


def test_sqlite_batch_rebuild_of_a_parent_table_keeps_child_rows(tmp_path):
    """Batch mode rebuilds a SQLite table (copy, drop, rename); with foreign_keys=ON the drop would
    cascade-delete the children. Migrations run with them off, and the pragma is back on afterwards."""
    engine = db.make_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    migrations.upgrade(engine)
    _seed_rows(engine)
    with engine.connect() as conn, migrations.locked(conn):
        with Operations.context(MigrationContext.configure(conn)):
            from alembic import op

            with op.batch_alter_table("kits", recreate="always") as batch:
                batch.alter_column("name", existing_type=sa.String(120), type_=sa.String(200))
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(db.devices)).scalar_one() == 1
        assert conn.execute(sa.select(sa.func.count()).select_from(db.desired_config)).scalar_one() == 1
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1
    engine.dispose()


def test_migrates_from_any_working_directory(tmp_path, monkeypatch):
    """No alembic.ini at runtime: the scripts are found from the package, wherever the fleet starts."""
    monkeypatch.chdir(tmp_path)
    engine = db.make_engine(f"sqlite:///{tmp_path / 'elsewhere.db'}")
    migrations.upgrade(engine)
    assert revision(engine) == migrations.head()
    engine.dispose()
