"""Online index builds: a CREATE INDEX built on a shadow copy of its table, then a short cut-over."""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from helpers import PROJECT_MIGRATIONS, migrations_dir, snapshot, tracked_versions, user_snapshot

from liteshift.core.db import connection
from liteshift.core.errors import BadInput, CheckFailed, DatabaseLocked
from liteshift.core.indexes import index_definition
from liteshift.core.migrations import load_migrations
from liteshift.rebuild.prebuild import plan_online
from liteshift.tasks.migrate import apply_migrations, copy_rebuilds
from liteshift.tasks.rollback import rollback_database
from liteshift.tasks.validate import validate_database
from liteshift.tasks.verify_indexes import verify_indexes

WORKLOG_INDEXES = ("idx_worklogs_user_range", "idx_worklogs_instance_range")


def _definitions(db: Path, names: tuple[str, ...]) -> dict[str, object]:
    with connection(db, 5000) as con:
        return {n: index_definition(con, n) for n in names}


def _rows(db: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    con = sqlite3.connect(db)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def _plan(db: Path, migrations: Path, index_mode: str = "online", rebuild_mode: str = "auto"):  # type: ignore[no-untyped-def]
    with connection(db, 5000) as con:
        return plan_online(con, load_migrations(migrations), rebuild_mode, index_mode)


def test_migration_001_online_builds_each_table_once_and_cuts_over_at_its_first_index(make_db) -> None:
    db = make_db()
    plan = _plan(db, PROJECT_MIGRATIONS)
    by_table = {s.spec.table: s for s in plan.tables}
    assert sorted(by_table) == ["billing_rates", "factorial_leaves", "worklogs"]
    assert [name for name, _ in by_table["worklogs"].prebuilt] == list(WORKLOG_INDEXES)
    assert by_table["worklogs"].at == ("001", 0) and by_table["worklogs"].at_statement
    assert plan.skipped == {("001", 0), ("001", 1), ("001", 2), ("001", 3)}  # the ANALYZEs still run


def test_auto_builds_small_tables_as_written_and_blocking_always(make_db) -> None:
    db = make_db()  # 2,000 worklogs: under the online threshold
    assert _plan(db, PROJECT_MIGRATIONS, index_mode="auto").tables == []
    assert _plan(db, PROJECT_MIGRATIONS, index_mode="blocking").tables == []


@pytest.mark.parametrize(
    "before,why",
    [
        ("DROP INDEX IF EXISTS idx_secs;", "named by a statement before it"),
        ("ALTER TABLE worklogs ADD COLUMN note TEXT;", "another schema change of its table"),
        ("CREATE TRIGGER t AFTER INSERT ON worklogs BEGIN SELECT 1; END;", "a trigger on its table"),
    ],
)
def test_an_index_something_else_could_see_is_built_as_written(make_db, tmp_path, before, why) -> None:
    db = make_db()
    d = migrations_dir(
        tmp_path,
        {"001_x.sql": f"-- migrate:up\n{before}\nCREATE INDEX idx_secs ON worklogs(time_spent_seconds);\n"},
    )
    assert _plan(db, d).tables == [], why


def test_an_online_index_is_exactly_the_blocking_one_and_no_row_changes(make_db, config, tmp_path) -> None:
    blocking_db, online_db = make_db(), tmp_path / "online.db"
    online_db.write_bytes(blocking_db.read_bytes())
    before = user_snapshot(online_db)
    apply_migrations(config(blocking_db, index_mode="blocking"))
    result = apply_migrations(config(online_db, index_mode="online"))
    names = (*WORKLOG_INDEXES, "idx_billing_rates_lookup", "idx_factorial_leaves_company_status")
    assert _definitions(online_db, names) == _definitions(blocking_db, names)
    # The text in sqlite_schema too, as SQLite keeps it: 001 writes IF NOT EXISTS, which it drops.
    text = "SELECT name, sql FROM sqlite_schema WHERE type = 'index' AND name LIKE 'idx_%' ORDER BY name"
    assert _rows(online_db, text) == _rows(blocking_db, text)
    assert set(names) <= {name for name, _ in _rows(online_db, text)}
    builds = {s.table: s for s in result.rebuilds}
    assert builds["worklogs"].index_build and builds["worklogs"].prebuilt_indexes == 2
    assert builds["worklogs"].built_in_lock == 0
    assert result.rows_changed == 0  # the cut-over's own rows are not the migration's
    after = user_snapshot(online_db)
    assert {k: v for k, v in after.items() if k.startswith("rows:")} == {
        k: v for k, v in before.items() if k.startswith("rows:")
    }
    assert len(verify_indexes(config(online_db), _definitions(blocking_db, names))) == 4  # step 4 as ever
    assert _rows(online_db, "PRAGMA integrity_check") == [("ok",)]
    assert _rows(online_db, "SELECT name FROM sqlite_schema WHERE name LIKE 'liteshift_new_%'") == []


def test_partial_expression_and_unique_indexes_online(make_db, config, tmp_path) -> None:
    db = make_db()
    d = migrations_dir(
        tmp_path,
        {
            "001_x.sql": "-- migrate:up\n"
            "CREATE INDEX idx_long ON worklogs(author_email) WHERE time_spent_seconds > 3600;\n"
            "CREATE INDEX idx_lower ON worklogs(lower(author_email), started DESC);\n"
            "create unique index if not exists main.idx_uid ON worklogs(id, company_id) ;\n"
        },
    )
    result = apply_migrations(config(db, migrations_dir=d, index_mode="online"))
    assert result.rebuilds[0].index_build and result.rebuilds[0].prebuilt_indexes == 3
    sql = dict(_rows(db, "SELECT name, sql FROM sqlite_schema WHERE name LIKE 'idx_%'"))
    assert "WHERE time_spent_seconds > 3600" in str(sql["idx_long"])
    assert "lower(author_email)" in str(sql["idx_lower"])
    assert sql["idx_uid"] == "CREATE UNIQUE INDEX idx_uid ON worklogs(id, company_id)"  # as SQLite keeps it
    plan = _rows(db, "EXPLAIN QUERY PLAN SELECT author_email FROM worklogs WHERE time_spent_seconds > 3600")
    assert "idx_long" in str(plan)
    assert _rows(db, "PRAGMA integrity_check") == [("ok",)]


def test_a_unique_index_over_duplicate_keys_is_refused_before_anything_is_written(make_db, config, tmp_path):
    db = make_db()
    d = migrations_dir(
        tmp_path,
        {"001_x.sql": "-- migrate:up\nCREATE UNIQUE INDEX idx_one ON worklogs(company_id, team_id);\n"},
    )
    before = snapshot(db)
    with pytest.raises(BadInput) as err:
        validate_database(config(db, migrations_dir=d, index_mode="online"))
    assert err.value.what == "The unique index idx_one cannot be built on worklogs"
    top = _rows(
        db,
        "SELECT company_id, team_id, count(*) FROM worklogs GROUP BY 1, 2 HAVING count(*) > 1 "
        "ORDER BY company_id, team_id LIMIT 1",
    )[0]
    assert err.value.why.startswith(f"{top[2]} rows have (company_id, team_id) = ({top[0]!r}, {top[1]!r})")
    assert snapshot(db) == before


@pytest.fixture
def items_db(tmp_path: Path) -> Path:
    db = tmp_path / "items.db"
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA journal_mode = WAL")
    con.execute('CREATE TABLE "Item List" (id INTEGER PRIMARY KEY, code TEXT UNIQUE, qty INTEGER, note TEXT)')
    con.execute('CREATE INDEX "items qty" ON "Item List"(qty)')
    con.execute("BEGIN")
    con.executemany(
        'INSERT INTO "Item List" (code, qty, note) VALUES (?, ?, ?)',
        [(f"c{i}", i % 50 + 1, f"n{i % 7}") for i in range(20_000)],
    )
    con.execute("COMMIT")
    con.close()
    return db


def test_an_online_index_under_a_writer_loses_and_duplicates_nothing(items_db, config, tmp_path) -> None:
    db = items_db
    d = migrations_dir(
        tmp_path, {"001_x.sql": '-- migrate:up\nCREATE INDEX "by note" ON "Item List"(note, qty DESC);\n'}
    )
    cfg = config(db, migrations_dir=d, index_mode="online")
    stop, done = threading.Event(), [0]

    def writer() -> None:
        w = sqlite3.connect(db, isolation_level=None, timeout=10)
        rnd = random.Random(11)
        while not stop.is_set():
            key, pick = rnd.randint(1, 20_000), rnd.random()
            if pick < 0.3:
                w.execute(
                    'INSERT INTO "Item List" (code, qty, note) VALUES (?, 5, ?)', (f"w{done[0]}", "new")
                )
            elif pick < 0.55:
                w.execute('UPDATE "Item List" SET qty = qty + 1, note = ? WHERE id = ?', (f"u{key % 5}", key))
            elif pick < 0.75:
                w.execute('DELETE FROM "Item List" WHERE id = ?', (key,))
            else:  # a key-changing update
                w.execute('UPDATE OR IGNORE "Item List" SET id = id + 1000000 WHERE id = ?', (key,))
            done[0] += 1
            time.sleep(0.0005)
        w.close()

    def wait_for(writes: int) -> None:
        deadline = time.monotonic() + 60
        while done[0] < writes and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.01)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        wait_for(50)
        copy_rebuilds(cfg)  # beside the writer
        wait_for(done[0] + 100)  # and more after it: the cut-over has a backlog to drain
    finally:
        stop.set()
        thread.join()
    expected = _rows(db, 'SELECT * FROM "Item List" ORDER BY id')
    result = apply_migrations(cfg)
    assert result.rebuilds[0].index_build and result.rebuilds[0].reconciled > 0
    assert _rows(db, 'SELECT * FROM "Item List" ORDER BY id') == expected
    assert _rows(db, 'SELECT * FROM "Item List" INDEXED BY "by note" ORDER BY id') == expected
    assert _rows(db, "PRAGMA integrity_check") == [("ok",)]
    assert _rows(
        db, "SELECT name FROM sqlite_schema WHERE tbl_name = 'Item List' AND type = 'index' ORDER BY 1"
    ) == [
        ("by note",),
        ("items qty",),
        ("sqlite_autoindex_Item List_1",),
    ]


@pytest.mark.parametrize("write", ["insert", "update", "delete", "replace"])
def test_an_online_index_is_undone_keeping_every_later_write(items_db, config, tmp_path, write) -> None:
    db = items_db
    d = migrations_dir(
        tmp_path, {"001_x.sql": '-- migrate:up\nCREATE INDEX "by note" ON "Item List"(note);\n'}
    )
    apply_migrations(config(db, migrations_dir=d, index_mode="online"))
    con = sqlite3.connect(db, isolation_level=None)
    con.execute(
        {
            "insert": "INSERT INTO \"Item List\" (code, qty, note) VALUES ('app', 1, 'APP')",
            "update": "UPDATE \"Item List\" SET note = 'APP' WHERE id = 5",
            "delete": 'DELETE FROM "Item List" WHERE id = 6',
            # REPLACE over the UNIQUE code of row 7: row 7 deleted, this one written
            "replace": "INSERT OR REPLACE INTO \"Item List\" (code, qty, note) VALUES ('c6', 1, 'APP')",
        }[write]
    )
    con.close()
    expected = _rows(db, 'SELECT * FROM "Item List" ORDER BY id')
    result = rollback_database(db, d)
    assert result.action == "derived-down"
    assert _rows(db, 'SELECT * FROM "Item List" ORDER BY id') == expected
    assert _rows(db, "SELECT name FROM sqlite_schema WHERE name = 'by note'") == []


def test_failure_of_an_online_index_build_names_the_key_and_swaps_nothing(items_db, config, tmp_path) -> None:
    db = items_db
    d = migrations_dir(
        tmp_path, {"001_x.sql": '-- migrate:up\nCREATE UNIQUE INDEX "one note" ON "Item List"(note, qty);\n'}
    )
    cfg = config(db, migrations_dir=d, index_mode="online")
    before = snapshot(db)
    with pytest.raises(CheckFailed) as err:
        copy_rebuilds(cfg)  # validation would refuse it first; the copy must too
    assert err.value.what == "The unique index one note cannot be built on Item List"
    assert "rows have (note, qty) = (" in err.value.why
    assert {k: v for k, v in snapshot(db).items() if "liteshift_" not in k} == {
        k: v for k, v in before.items() if "liteshift_" not in k
    }
    assert _rows(db, "SELECT name FROM sqlite_schema WHERE name LIKE 'liteshift_new_%'") == []


def test_a_duplicate_written_during_the_copy_fails_before_the_swap(items_db, config, tmp_path) -> None:
    """The application makes two rows share the new unique key after the copy: the reconcile
    meets them, and the migration fails naming the key; nothing is swapped."""
    db = items_db
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("UPDATE \"Item List\" SET note = 'n' || id")
    con.close()
    d = migrations_dir(
        tmp_path, {"001_x.sql": '-- migrate:up\nCREATE UNIQUE INDEX "one note" ON "Item List"(note);\n'}
    )
    cfg = config(db, migrations_dir=d, index_mode="online")
    validate_database(cfg)
    copy_rebuilds(cfg)
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("UPDATE \"Item List\" SET note = 'n1' WHERE id = 2")  # the application, after the copy
    con.close()
    before = user_snapshot(db)
    with pytest.raises(CheckFailed) as err:
        apply_migrations(cfg)
    assert (err.value.what, err.value.why) == (
        "The unique index one note cannot be built on Item List",
        "2 rows have (note) = ('n1')",
    )
    assert user_snapshot(db) == before
    assert _rows(db, "SELECT name FROM sqlite_schema WHERE name LIKE 'liteshift_new_%'") == []
    assert tracked_versions(db) == []


def test_the_demo_batch_prebuilds_001s_indexes_on_002s_shadow(make_db, config) -> None:
    """Today's demo built 001's two worklogs indexes on the old table, then again on the new one
    inside the lock; now they are built once, on the rebuild's shadow, and 001's ANALYZE of them
    runs after the cut-over."""
    from helpers import ALL_MIGRATIONS

    db = make_db()
    plan = _plan(db, ALL_MIGRATIONS, index_mode="auto", rebuild_mode="online")
    worklogs = next(s for s in plan.tables if s.spec.table == "worklogs")
    assert not worklogs.at_statement and [n for n, _ in worklogs.prebuilt] == list(WORKLOG_INDEXES)
    assert [s.split()[1] for s in plan.deferred[worklogs.at]] == list(WORKLOG_INDEXES)
    result = apply_migrations(config(db, migrations_dir=ALL_MIGRATIONS, rebuild_mode="online"))
    stats = next(s for s in result.rebuilds if s.table == "worklogs")
    assert (stats.prebuilt_indexes, stats.built_in_lock) == (2, 0)
    assert _rows(db, "SELECT idx FROM sqlite_stat1 WHERE idx IN (?, ?) ORDER BY idx", WORKLOG_INDEXES) == [
        (WORKLOG_INDEXES[1],),
        (WORKLOG_INDEXES[0],),
    ]
    assert _rows(db, "PRAGMA integrity_check") == [("ok",)]


def _hold_the_lock(db: Path, seconds: float, started: threading.Event) -> None:
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("BEGIN IMMEDIATE")
    started.set()
    time.sleep(seconds)
    con.execute("COMMIT")
    con.close()


def test_a_long_application_transaction_does_not_end_the_copy(items_db, config, tmp_path) -> None:
    d = migrations_dir(
        tmp_path, {"001_x.sql": '-- migrate:up\nCREATE INDEX "by note" ON "Item List"(note);\n'}
    )
    cfg = config(items_db, migrations_dir=d, index_mode="online", busy_timeout_ms=200)
    started = threading.Event()
    holder = threading.Thread(target=_hold_the_lock, args=(items_db, 1.5, started))
    holder.start()
    started.wait(10)
    try:
        stats = copy_rebuilds(cfg)  # its first batch waits past its busy timeout, twice or more
    finally:
        holder.join()
    assert stats[0].rows == 20_000
    assert apply_migrations(cfg).rebuilds[0].index_build


def test_a_lock_held_past_every_retry_ends_the_copy_writing_nothing(
    items_db, config, tmp_path, monkeypatch
) -> None:
    from liteshift.rebuild import online

    monkeypatch.setattr(online, "LOCK_RETRIES", 2)
    d = migrations_dir(
        tmp_path, {"001_x.sql": '-- migrate:up\nCREATE INDEX "by note" ON "Item List"(note);\n'}
    )
    cfg = config(items_db, migrations_dir=d, index_mode="online", busy_timeout_ms=100)
    started = threading.Event()
    holder = threading.Thread(target=_hold_the_lock, args=(items_db, 3.0, started))
    holder.start()
    started.wait(10)
    try:
        with pytest.raises(DatabaseLocked) as err:
            copy_rebuilds(cfg)
    finally:
        holder.join()
    assert err.value.what == f"Database {items_db} is locked"
    assert _rows(items_db, "SELECT name FROM sqlite_schema WHERE name LIKE 'liteshift_%'") == []


def test_a_row_changed_behind_the_capture_fails_the_checksum_before_the_swap(
    items_db, config, tmp_path
) -> None:
    db = items_db
    d = migrations_dir(tmp_path, {"001_x.sql": '-- migrate:up\nCREATE INDEX "by note" ON "Item List"(note);'})
    cfg = config(db, migrations_dir=d, index_mode="online")
    copy_rebuilds(cfg)
    con = sqlite3.connect(db, isolation_level=None)
    capture = con.execute(
        "SELECT name, sql FROM sqlite_schema WHERE type = 'trigger' AND name LIKE 'liteshift_capture_%'"
    ).fetchall()
    assert capture  # the copy's capture triggers are on the table
    con.execute("BEGIN")
    for name, _ in capture:
        con.execute(f"DROP TRIGGER {name}")
    con.execute("UPDATE \"Item List\" SET note = 'behind' WHERE id IN (5, 9)")  # not recorded
    for _, sql in capture:
        con.execute(sql)
    con.execute("COMMIT")
    con.close()
    before = user_snapshot(db)
    with pytest.raises(CheckFailed) as err:
        apply_migrations(cfg)
    assert err.value.what == "The copy of Item List differs from the table"
    assert err.value.why.startswith("first keys: id 5, id 9; a write reached the table without")
    assert user_snapshot(db) == before
    assert _rows(db, "SELECT name FROM sqlite_schema WHERE name LIKE 'liteshift_new_%'") == []
    assert tracked_versions(db) == []


def test_the_checksum_compares_every_row_across_ranges(items_db, config, tmp_path, monkeypatch) -> None:
    from liteshift.rebuild import online

    monkeypatch.setattr(online, "VERIFY_ROWS", 3_000)  # several ranges, the last one short
    d = migrations_dir(tmp_path, {"001_x.sql": '-- migrate:up\nCREATE INDEX "by note" ON "Item List"(note);'})
    cfg = config(items_db, migrations_dir=d, index_mode="online")
    assert copy_rebuilds(cfg)[0].verified_rows == 0  # the flow's copy step: the migrate step checks
    assert apply_migrations(cfg).rebuilds[0].verified_rows == 20_000


PAIR = '"Pair Table"'
PEOPLES_TABLES = {
    # WITHOUT ROWID, a composite primary key, quoted names
    "without-rowid": [
        f'CREATE TABLE {PAIR} (a INTEGER, "b col" TEXT, v INTEGER, PRIMARY KEY (a, "b col")) WITHOUT ROWID',
    ],
    # an AUTOINCREMENT parent with a cascading child, a view and a trigger naming it
    "autoincrement-parent": [
        f'CREATE TABLE {PAIR} (id INTEGER PRIMARY KEY AUTOINCREMENT, a INTEGER, "b col" TEXT, v INTEGER)',
        f"CREATE TABLE child (id INTEGER PRIMARY KEY, pid INTEGER REFERENCES {PAIR}(id) ON DELETE CASCADE)",
        f'CREATE VIEW "pair view" AS SELECT a, v FROM {PAIR}',
        "CREATE TABLE audit (what TEXT)",
        f'CREATE TRIGGER t_ins AFTER INSERT ON {PAIR} BEGIN INSERT INTO audit VALUES (NEW."b col"); END',
    ],
}


@pytest.mark.parametrize("kind", sorted(PEOPLES_TABLES))
def test_an_online_index_on_tables_as_people_write_them(tmp_path, config, kind) -> None:
    db = tmp_path / "real.db"
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA journal_mode = WAL")
    for stmt in PEOPLES_TABLES[kind]:
        con.execute(stmt)
    con.execute("BEGIN")
    rows = [(i, f"k{i}", i % 9) for i in range(3000)]
    con.executemany(f'INSERT INTO {PAIR} (a, "b col", v) VALUES (?, ?, ?)', rows)
    if kind == "autoincrement-parent":
        con.executemany("INSERT INTO child (pid) VALUES (?)", [(1 + i % 3000,) for i in range(1000)])
        con.execute(f"DELETE FROM {PAIR} WHERE id > 2990")  # top ids gone: the sequence must keep them
    con.execute("COMMIT")
    con.close()
    ordered = f'SELECT * FROM {PAIR} ORDER BY a, "b col"'  # a new index may change SELECT *'s order
    content, before = _rows(db, ordered), user_snapshot(db)
    d = migrations_dir(tmp_path, {"001_x.sql": f'-- migrate:up\nCREATE INDEX "by v" ON {PAIR}(v, "b col");'})
    result = apply_migrations(config(db, migrations_dir=d, index_mode="online"))
    assert result.rebuilds[0].index_build and result.rows_changed == 0
    changed = {"schema:index:by v", "rows:Pair Table"}
    assert {k: v for k, v in user_snapshot(db).items() if k not in changed} == {
        k: v for k, v in before.items() if k not in changed
    }
    assert _rows(db, ordered) == content
    assert _rows(db, "PRAGMA integrity_check") == [("ok",)] and _rows(db, "PRAGMA foreign_key_check") == []
    assert "by v" in str(_rows(db, f'EXPLAIN QUERY PLAN SELECT "b col" FROM {PAIR} WHERE v = 3'))


def test_a_derived_down_drops_every_prebuilt_index_if_not_exists_included(make_db, config, tmp_path) -> None:
    """001 without its down, built online: its second worklogs index exists from the cut-over at
    the first one, so its IF NOT EXISTS must not read as "it was there before" (make reliability's
    writers test found the index left behind by the rollback)."""
    db = make_db()
    up = (PROJECT_MIGRATIONS / "001_add_composite_indexes.sql").read_text().split("-- migrate:down")[0]
    d = migrations_dir(tmp_path, {"001_add_composite_indexes.sql": up})
    before = user_snapshot(db)
    indexes = "SELECT name FROM sqlite_schema WHERE type = 'index' AND name NOT LIKE '%liteshift%' ORDER BY 1"
    own = _rows(db, indexes)
    apply_migrations(config(db, migrations_dir=d, index_mode="online"))
    assert rollback_database(db, d).action == "derived-down"
    assert _rows(db, indexes) == own
    assert {k: v for k, v in user_snapshot(db).items() if "sqlite_stat" not in k} == {
        k: v for k, v in before.items() if "sqlite_stat" not in k
    }
