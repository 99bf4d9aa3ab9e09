"""Table rebuilds on schemas people really have: cascades, views, triggers, AUTOINCREMENT, rowids,
WITHOUT ROWID, generated columns and awkward names; blocking and online, with a writer beside."""

from __future__ import annotations

import hashlib
import random
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from helpers import ALL_MIGRATIONS, migrations_dir, snapshot, tracked_versions, user_snapshot

from liteshift.core import throttle
from liteshift.core.db import Held
from liteshift.core.errors import BadInput, CheckFailed, RollbackRefused
from liteshift.core.migrations import Rebuild, parse_migration
from liteshift.rebuild import blocking, online
from liteshift.tasks.migrate import apply_migrations
from liteshift.tasks.rollback import rollback_database
from liteshift.tasks.validate import validate_database

PARENT = """CREATE TABLE "Parent Table" (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    "Name" TEXT UNIQUE,
    score INTEGER
)"""


def _db(path: Path, *ddl: str, rows: list[str] = ()) -> Path:
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode = WAL")
    for stmt in ddl:
        con.execute(stmt)
    con.execute("BEGIN")
    for stmt in rows:
        con.execute(stmt)
    con.execute("COMMIT")
    con.close()
    return path


def _rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    con = sqlite3.connect(db)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _digest(db: Path, table: str, cols: str = "*") -> str:
    rows = _rows(db, f'SELECT {cols} FROM "{table}" ORDER BY rowid')
    return hashlib.sha256(repr(rows).encode()).hexdigest()


def _family(tmp_path: Path) -> Path:
    """A parent with ON DELETE CASCADE and SET NULL children, a view and triggers around it."""
    rows = [
        f'INSERT INTO "Parent Table" ("Name", score) VALUES (\'p{i}\', {i % 9 + 1})' for i in range(1, 201)
    ]
    rows += [f"INSERT INTO cascade_child (pid) VALUES ({1 + i % 200})" for i in range(600)]
    rows += [f"INSERT INTO null_child (pid) VALUES ({1 + i % 200})" for i in range(300)]
    rows += ['DELETE FROM "Parent Table" WHERE id > 190']  # top ids gone: AUTOINCREMENT must not reuse them
    rows += ["DELETE FROM cascade_child WHERE pid > 190", "DELETE FROM null_child WHERE pid > 190"]
    return _db(
        tmp_path / "family.db",
        PARENT,
        'CREATE TABLE cascade_child (id INTEGER PRIMARY KEY, pid INTEGER REFERENCES "Parent Table"(id) '
        "ON DELETE CASCADE)",
        'CREATE TABLE null_child (id INTEGER PRIMARY KEY, pid INTEGER REFERENCES "Parent Table"(id) '
        "ON DELETE SET NULL)",
        'CREATE INDEX "idx Score" ON "Parent Table"(score)',
        "CREATE TABLE audit (what TEXT, who TEXT)",
        'CREATE VIEW "scores view" AS SELECT id, score FROM "Parent Table"',
        'CREATE TRIGGER before_ins BEFORE INSERT ON "Parent Table" BEGIN '
        "INSERT INTO audit VALUES ('before', NEW.\"Name\"); END",
        'CREATE TRIGGER after_upd AFTER UPDATE ON "Parent Table" BEGIN '
        "INSERT INTO audit VALUES ('after', NEW.\"Name\"); END",
        "CREATE TRIGGER child_touch AFTER INSERT ON cascade_child BEGIN "
        'UPDATE "Parent Table" SET score = score WHERE id = NEW.pid; END',
        rows=rows,
    )


TARGET = """-- migrate:rebuild "Parent Table"
CREATE TABLE "Parent Table" (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    "Name" TEXT UNIQUE NOT NULL,
    score INTEGER NOT NULL CHECK (score > 0),
    added TEXT DEFAULT 'yes'
);
"""


@pytest.mark.parametrize("mode", ["blocking", "online"])
def test_parent_rebuild_keeps_children_views_triggers_and_sequence(tmp_path, config, mode):
    db = _family(tmp_path)
    before = snapshot(db)
    parent_before = _digest(db, "Parent Table", "id, Name, score")
    d = migrations_dir(tmp_path, {"001_parent.sql": TARGET})
    applied = apply_migrations(config(db, migrations_dir=d, rebuild_mode=mode))
    assert [r.mode for r in applied.rebuilds] == [mode]
    after = snapshot(db)
    for child in ("cascade_child", "null_child", "audit"):  # not one child row deleted or nulled
        assert after[f"rows:{child}"] == before[f"rows:{child}"]
    assert _digest(db, "Parent Table", "id, Name, score") == parent_before
    for name in (
        "schema:view:scores view",
        "schema:trigger:before_ins",
        "schema:trigger:after_upd",
        "schema:trigger:child_touch",
        "schema:index:idx Score",
    ):
        assert after[name] == before[name]
    assert _rows(db, "SELECT seq FROM sqlite_sequence WHERE name = 'Parent Table'") == [(200,)]
    assert _rows(db, "PRAGMA integrity_check") == [("ok",)]
    # Online, the old copy is kept as the shadow of a revert for the window; blocking, it is gone.
    assert any(k.startswith("schema:") and "liteshift_new" in k for k in after) is (mode == "online")
    assert [r.retained for r in applied.rebuilds] == [mode == "online"]
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA foreign_keys = ON")
    con.execute('INSERT INTO "Parent Table" ("Name", score) VALUES (\'new\', 3)')
    assert con.execute('SELECT max(id), count(*) FROM "Parent Table"').fetchone() == (201, 191)
    con.execute('UPDATE "Parent Table" SET score = 4 WHERE id = 201')
    assert con.execute("SELECT what FROM audit WHERE who = 'new' ORDER BY rowid").fetchall() == [
        ("before",),
        ("after",),
    ]
    with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint failed"):
        con.execute('UPDATE "Parent Table" SET score = 0 WHERE id = 1')
    assert con.execute('SELECT count(*) FROM "scores view"').fetchone() == (191,)
    con.execute('DELETE FROM "Parent Table" WHERE id = 1')  # the cascade still works on the new table
    assert con.execute("SELECT count(*) FROM cascade_child WHERE pid = 1").fetchone() == (0,)
    con.close()


def test_rebuild_keeps_sparse_rowids_without_ipk_and_awkward_names(tmp_path, config):
    db = _db(
        tmp_path / "r.db",
        'CREATE TABLE "Mixed Case ""q"" t" ("Some Col" TEXT, b INTEGER)',
        rows=[
            f'INSERT INTO "Mixed Case ""q"" t" (rowid, "Some Col", b) VALUES ({r}, \'v{r}\', {r})'
            for r in (3, 17, 1000, 99999)
        ],
    )
    d = migrations_dir(
        tmp_path,
        {
            "001_x.sql": '-- migrate:rebuild "Mixed Case ""q"" t"\n'
            'CREATE TABLE "Mixed Case ""q"" t" ("Some Col" TEXT NOT NULL, b INTEGER, '
            "c INTEGER GENERATED ALWAYS AS (b * 2) VIRTUAL);\n"
        },
    )
    apply_migrations(config(db, migrations_dir=d))
    assert _rows(db, 'SELECT rowid, "Some Col", b, c FROM "Mixed Case ""q"" t" ORDER BY rowid') == [
        (3, "v3", 3, 6),
        (17, "v17", 17, 34),
        (1000, "v1000", 1000, 2000),
        (99999, "v99999", 99999, 199998),
    ]


@pytest.mark.parametrize("mode", ["blocking", "online"])
def test_without_rowid_composite_key_and_generated_columns(tmp_path, config, mode):
    db = _db(
        tmp_path / "w.db",
        "CREATE TABLE kv (tenant TEXT, k INTEGER, v REAL, doubled REAL GENERATED ALWAYS AS (v * 2) STORED, "
        "PRIMARY KEY (tenant, k)) WITHOUT ROWID",
        rows=[f"INSERT INTO kv (tenant, k, v) VALUES ('t{i % 3}', {i}, {i / 2})" for i in range(300)],
    )
    before = _rows(db, "SELECT tenant, k, v, doubled FROM kv ORDER BY tenant, k")
    d = migrations_dir(
        tmp_path,
        {
            "001_kv.sql": "-- migrate:rebuild kv\n"
            "CREATE TABLE kv (tenant TEXT NOT NULL, k INTEGER NOT NULL, v REAL CHECK (v >= 0), "
            "doubled REAL GENERATED ALWAYS AS (v * 2) STORED, PRIMARY KEY (tenant, k)) "
            "WITHOUT ROWID, STRICT;\n"
        },
    )
    applied = apply_migrations(config(db, migrations_dir=d, rebuild_mode=mode))
    assert applied.rebuilds[0].rows == 300
    assert _rows(db, "SELECT tenant, k, v, doubled FROM kv ORDER BY tenant, k") == before
    assert "STRICT" in _rows(db, "SELECT sql FROM sqlite_schema WHERE name = 'kv'")[0][0]


def test_columns_section_computes_values_and_a_dropped_column_is_gone(tmp_path, config, make_db):
    db = make_db(rows=500)
    d = migrations_dir(
        tmp_path,
        {
            "001_w.sql": "-- migrate:rebuild factorial_leaves\n"
            "CREATE TABLE factorial_leaves (id INTEGER PRIMARY KEY, company_id INTEGER NOT NULL, "
            "status TEXT NOT NULL, start_date TEXT NOT NULL, end_date TEXT NOT NULL, "
            "days INTEGER NOT NULL CHECK (days > 0));\n"
            "-- migrate:columns\n"
            "-- days = julianday(end_date) - julianday(start_date)\n"
        },
    )
    want = _rows(
        db,
        "SELECT id, CAST(julianday(end_date) - julianday(start_date) AS INTEGER) "
        "FROM factorial_leaves ORDER BY id",
    )
    apply_migrations(config(db, migrations_dir=d))
    assert _rows(db, "SELECT id, days FROM factorial_leaves ORDER BY id") == want
    assert "user_id" not in [r[1] for r in _rows(db, "PRAGMA table_info(factorial_leaves)")]


def test_violating_rows_are_refused_before_anything_is_written(tmp_path, config, make_db):
    db = make_db(rows=500)
    con = sqlite3.connect(db)
    con.execute("UPDATE worklogs SET time_spent_seconds = 0 WHERE id IN (7, 9)")
    con.commit()
    con.close()
    before = snapshot(db)
    d = migrations_dir(
        tmp_path,
        {
            "001_w.sql": "-- migrate:rebuild worklogs\n"
            + _worklogs_target("CONSTRAINT positive_time CHECK (time_spent_seconds > 0)")
        },
    )
    with pytest.raises(BadInput) as err:
        validate_database(config(db, migrations_dir=d))
    assert str(err.value) == (
        '001_w.sql: rows of worklogs break the new definition: constraint "positive_time" CHECK '
        "(time_spent_seconds > 0): 2 row(s), first: rowid 7, rowid 9. Try: fix those rows, or give the "
        "column an expression under '-- migrate:columns', then run again; nothing was written"
    )
    assert err.value.exit_code == 2
    assert snapshot(db) == before
    # ... and an expression that repairs them is accepted.
    (tmp_path / "fixed").mkdir()
    fixed = migrations_dir(
        tmp_path / "fixed",
        {
            "001_w.sql": "-- migrate:rebuild worklogs\n"
            + _worklogs_target("CHECK (time_spent_seconds > 0)")
            + "-- migrate:columns\n-- time_spent_seconds = max(time_spent_seconds, 1)\n"
        },
    )
    validate_database(config(db, migrations_dir=fixed))
    apply_migrations(config(db, migrations_dir=fixed))
    assert _rows(db, "SELECT time_spent_seconds FROM worklogs WHERE id IN (7, 9)") == [(1,), (1,)]


def _worklogs_target(extra: str) -> str:
    return (
        "CREATE TABLE worklogs (id INTEGER PRIMARY KEY, "
        "company_id INTEGER NOT NULL REFERENCES companies(id), "
        "team_id INTEGER REFERENCES teams(id), jira_instance TEXT NOT NULL, author_email TEXT NOT NULL, "
        "issue_key TEXT NOT NULL, started TEXT NOT NULL, time_spent_seconds INTEGER NOT NULL, comment TEXT, "
        f"{extra});\n"
    )


def test_a_view_naming_a_dropped_column_is_refused_in_validation_and_at_apply(tmp_path, config):
    db = _db(
        tmp_path / "v.db",
        "CREATE TABLE t (id INTEGER PRIMARY KEY, a, b)",
        "CREATE VIEW vb AS SELECT id, b FROM t",
        rows=["INSERT INTO t VALUES (1, 2, 3)"],
    )
    before = snapshot(db)
    d = migrations_dir(
        tmp_path, {"001_t.sql": "-- migrate:rebuild t\nCREATE TABLE t (id INTEGER PRIMARY KEY, a);\n"}
    )
    with pytest.raises(BadInput) as err:
        validate_database(config(db, migrations_dir=d))
    assert str(err.value) == (
        "Migration 001_t.sql fails on this database's schema: rebuild of t: "
        "error in view vb: no such column: b. "
        "Try: fix the migration (or the --database path); nothing was written"
    )
    with pytest.raises(
        CheckFailed, match=r"^The rebuild of t breaks the schema: error in view vb: no such column: b"
    ):
        apply_migrations(config(db, migrations_dir=d))  # the same check inside the transaction
    assert snapshot(db) == before


def test_a_parent_row_deleted_in_the_transaction_is_caught_by_the_foreign_key_check(tmp_path):
    db = _family(tmp_path)
    before = snapshot(db)
    con = rebuild_connection(db)
    con.execute("BEGIN IMMEDIATE")
    con.execute('DELETE FROM "Parent Table" WHERE id = 5')  # children keep pointing at it (fk off)
    with pytest.raises(CheckFailed) as err:
        blocking.rebuild_blocking(con, Rebuild("Parent Table", PARENT))
    assert str(err.value) == (
        "The rebuild of Parent Table breaks a foreign key: 3 row(s) point to no parent row, first: "
        "cascade_child rowid 5 -> Parent Table, cascade_child rowid 205 -> Parent Table, cascade_child rowid "
        "405 -> Parent Table. Try: nothing was changed (the transaction was rolled back); "
        "fix those rows and run again"
    )
    con.execute("ROLLBACK")
    con.close()
    assert snapshot(db) == before


def rebuild_connection(db: Path) -> sqlite3.Connection:
    con = sqlite3.connect(db, isolation_level=None, timeout=10)
    con.execute("PRAGMA foreign_keys = OFF")
    return con


def test_rollback_rebuilds_back_to_the_saved_definition(tmp_path, config):
    db = _family(tmp_path)
    before = user_snapshot(db)
    d = migrations_dir(tmp_path, {"001_parent.sql": TARGET})
    apply_migrations(config(db, migrations_dir=d, backup_dir=tmp_path))
    assert user_snapshot(db) != before
    result = rollback_database(db, d, ["001"])
    assert result.action == "derived-down"
    now = user_snapshot(db)
    assert {k: v for k, v in now.items() if k != "schema:table:Parent Table"} == {
        k: v for k, v in before.items() if k != "schema:table:Parent Table"
    }
    # The saved text comes back (SQLite writes the renamed table's name in quotes).
    assert (
        now["schema:table:Parent Table"].split("(", 1)[1]
        == before["schema:table:Parent Table"].split("(", 1)[1]
    )
    assert tracked_versions(db) == []


def test_a_rebuild_that_dropped_a_column_is_undone_only_by_the_backup(tmp_path, config):
    db = _db(
        tmp_path / "d.db",
        "CREATE TABLE t (id INTEGER PRIMARY KEY, a, b NOT NULL)",
        rows=["INSERT INTO t VALUES (1, 2, 3)"],
    )
    d = migrations_dir(
        tmp_path, {"001_t.sql": "-- migrate:rebuild t\nCREATE TABLE t (id INTEGER PRIMARY KEY, a);\n"}
    )
    apply_migrations(config(db, migrations_dir=d))  # no backup recorded: nothing can give b back
    before = snapshot(db)
    with pytest.raises(RollbackRefused) as err:
        rollback_database(db, d, ["001"])
    assert str(err.value) == (
        "Cannot undo 001: 001_t.sql rebuilds t dropping a column or filling one from an expression, "
        "whose old values only the backup has, and there is no backup: backup (none recorded) is not "
        "there. Try: write a down section for the migration, or restore a backup by hand"
    )
    assert snapshot(db) == before
    assert tracked_versions(db) == ["001"]
    assert _rows(db, "SELECT * FROM t") == [(1, 2)]


def test_parse_errors_name_the_problem(tmp_path):
    cases = {
        "-- migrate:rebuild t\nCREATE TABLE u (a);\n": (
            "001_x.sql (rebuild t): the CREATE TABLE names 'u', not 't'"
        ),
        "-- migrate:rebuild t\nCREATE TABLE t (a);\nCREATE INDEX i ON t(a);\n": (
            "001_x.sql (rebuild t) must hold exactly one CREATE TABLE statement"
        ),
        "-- migrate:up\nCREATE INDEX i ON t(a);\n-- migrate:columns\n-- a = 1\n": (
            "Migration 001_x.sql: '-- migrate:columns' must follow a rebuild's CREATE TABLE"
        ),
        "-- migrate:rebuild t\nCREATE TABLE t (a);\n-- migrate:columns\na = 1\n": (
            "Migration 001_x.sql: 'a = 1' is not 'column = expression'"
        ),
        "-- migrate:rebild t\nCREATE TABLE t (a);\n": (
            "Migration 001_x.sql has an unknown directive '-- migrate:rebild'"
        ),
    }
    for text, what in cases.items():
        path = tmp_path / "001_x.sql"
        path.write_text(text)
        with pytest.raises(BadInput) as err:
            parse_migration(path)
        assert err.value.what == what


def test_online_rebuild_with_a_concurrent_writer_loses_and_duplicates_nothing(tmp_path, config):
    db = _db(
        tmp_path / "o.db",
        "CREATE TABLE items (id INTEGER PRIMARY KEY, code TEXT UNIQUE, qty INTEGER)",
        "CREATE INDEX items_qty ON items(qty)",
        rows=[f"INSERT INTO items (code, qty) VALUES ('c{i}', {i % 50 + 1})" for i in range(20_000)],
    )
    spec = Rebuild(
        "items",
        "CREATE TABLE items (id INTEGER PRIMARY KEY, code TEXT UNIQUE NOT NULL, "
        "qty INTEGER NOT NULL CHECK (qty > 0))",
    )
    con = rebuild_connection(db)
    state = online.start_online(con, spec, "001", str(db), 10_000)
    stop = threading.Event()
    done: list[str] = []

    def writer() -> None:
        w = sqlite3.connect(db, isolation_level=None, timeout=10)
        rnd = random.Random(7)
        i = 0
        while not stop.is_set():
            i += 1
            pick = rnd.random()
            key = rnd.randint(1, 20_000)
            if pick < 0.3:
                w.execute("INSERT INTO items (code, qty) VALUES (?, ?)", (f"w{i}", 5))
            elif pick < 0.5:
                w.execute("UPDATE items SET qty = qty + 1 WHERE id = ?", (key,))
            elif pick < 0.65:
                w.execute("DELETE FROM items WHERE id = ?", (key,))
            elif pick < 0.8:  # a key-changing update
                w.execute("UPDATE OR IGNORE items SET id = id + 1000000 WHERE id = ?", (key,))
            else:  # INSERT OR REPLACE over a UNIQUE conflict deletes a row without a DELETE trigger
                w.execute("INSERT OR REPLACE INTO items (code, qty) VALUES (?, 9)", (f"c{key}",))
            done.append("ok")
            time.sleep(0.0005)
        w.close()

    def wait_for(writes: int) -> None:  # counts, not timings: a loaded machine only takes longer
        deadline = time.monotonic() + 60
        while len(done) < writes and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.01)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        wait_for(50)  # the writer is under way before the copy starts
        online.copy_online(con, state, str(db), 10_000, throttle.Throttle(rows=500))
        wait_for(200)
    finally:
        stop.set()
        thread.join()
    assert len(done) >= 200
    source = _digest(db, "items", "id, code, qty")
    con.execute("BEGIN IMMEDIATE")
    stats = online.cut_over(con, state)
    con.execute("COMMIT")
    assert stats.rows >= 20_000 and stats.batches > 3
    assert _digest(db, "items", "id, code, qty") == source  # equal to the source at the cut-over
    assert (
        _rows(db, "SELECT count(*), count(DISTINCT code) FROM items")[0][0]
        == _rows(db, "SELECT count(DISTINCT id) FROM items")[0][0]
    )
    online.drop_old_tables(con, str(db), 10_000)
    con.close()
    assert _rows(db, "PRAGMA integrity_check") == [("ok",)]
    assert sorted(r[0] for r in _rows(db, "SELECT name FROM sqlite_schema")) == [
        "items",
        "items_qty",
        "liteshift_rebuilds",
        "sqlite_autoindex_items_1",
        "sqlite_autoindex_liteshift_rebuilds_1",
    ]
    assert _rows(db, "EXPLAIN QUERY PLAN SELECT * FROM items WHERE qty = 3")[0][3] == (
        "SEARCH items USING INDEX items_qty (qty=?)"
    )


def test_a_violating_write_during_the_copy_stops_the_cut_over_and_writes_go_on(tmp_path):
    db = _db(
        tmp_path / "v.db",
        "CREATE TABLE items (id INTEGER PRIMARY KEY, qty INTEGER)",
        rows=[f"INSERT INTO items (qty) VALUES ({i % 5 + 1})" for i in range(2000)],
    )
    spec = Rebuild("items", "CREATE TABLE items (id INTEGER PRIMARY KEY, qty INTEGER CHECK (qty > 0))")
    con = rebuild_connection(db)
    state = online.start_online(con, spec, "001", str(db), 5000)
    online.copy_online(con, state, str(db), 5000)
    app = sqlite3.connect(db, isolation_level=None)
    app.execute("UPDATE items SET qty = -1 WHERE id = 10")
    before = _digest(db, "items")
    con.execute("BEGIN IMMEDIATE")
    with pytest.raises(CheckFailed, match="CHECK constraint failed"):
        online.cut_over(con, state)
    con.execute("ROLLBACK")
    assert _digest(db, "items") == before  # nothing swapped
    app.execute("INSERT INTO items (qty) VALUES (7)")  # the capture triggers still work
    app.execute("UPDATE items SET qty = 2 WHERE id = 10")  # the user fixes the row ...
    state = online.start_online(con, spec, "001", str(db), 5000)  # ... and the rebuild resumes
    assert state.phase == "reconcile"
    online.copy_online(con, state, str(db), 5000)
    con.execute("BEGIN IMMEDIATE")
    online.cut_over(con, state)
    con.execute("COMMIT")
    assert _rows(db, "SELECT count(*), max(id) FROM items") == [(2001, 2001)]
    app.close()
    con.close()


def test_an_abandoned_online_rebuild_leaves_the_application_writing(tmp_path):
    db = _db(
        tmp_path / "a.db",
        "CREATE TABLE items (id INTEGER PRIMARY KEY, qty INTEGER)",
        rows=[f"INSERT INTO items (qty) VALUES ({i})" for i in range(100)],
    )
    con = rebuild_connection(db)
    online.start_online(
        con,
        Rebuild("items", "CREATE TABLE items (id INTEGER PRIMARY KEY, qty INTEGER NOT NULL)"),
        "001",
        str(db),
        5000,
    )
    online.abandon_online(con, "items", str(db), 5000)
    con.close()
    names = sorted(r[0] for r in _rows(db, "SELECT name FROM sqlite_schema WHERE name LIKE 'liteshift_%'"))
    assert names == ["liteshift_rebuilds"]
    app = sqlite3.connect(db)
    app.execute("INSERT INTO items (qty) VALUES (1)")
    app.commit()
    assert app.execute("SELECT count(*) FROM items").fetchone() == (101,)
    app.close()


def test_migration_002_on_the_demo_database(tmp_path, config, make_db):
    db = make_db(rows=2000)
    cfg = config(db, backup_dir=tmp_path, migrations_dir=ALL_MIGRATIONS)
    v = validate_database(cfg)
    assert v.pending[-1] == "002_multi_tenant_constraints"
    assert v.rebuilds == ["worklogs", "factorial_leaves"]
    applied = apply_migrations(cfg)
    assert [r.table for r in applied.rebuilds] == ["worklogs", "factorial_leaves"]
    assert _rows(db, "PRAGMA foreign_key_check") == []
    con = sqlite3.connect(db)
    con.execute("PRAGMA foreign_keys = ON")
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY constraint failed"):
        # team 2 belongs to company 3 (1 + 2 % 20): a worklog of company 1 cannot use it
        con.execute(
            "INSERT INTO worklogs (company_id, team_id, jira_instance, author_email, issue_key, started, "
            "time_spent_seconds) VALUES (1, 2, 'x', 'a@b', 'K-1', '2025-01-01', 60)"
        )
    con.close()
    assert tracked_versions(db)[-1] == "002"


PETS = "CREATE TABLE pets (id INTEGER PRIMARY KEY, owner_id INTEGER REFERENCES owners(id))"


def _pets_copied_online(tmp_path: Path) -> tuple[Path, Rebuild, sqlite3.Connection, online.Online]:
    """50 owners, 3,000 pets without a foreign key, copied online towards one that has it."""
    db = _db(
        tmp_path / "pets.db",
        "CREATE TABLE owners (id INTEGER PRIMARY KEY)",
        "CREATE TABLE pets (id INTEGER PRIMARY KEY, owner_id INTEGER)",
        rows=["INSERT INTO owners (id) VALUES " + ", ".join(f"({i})" for i in range(1, 51))]
        + [f"INSERT INTO pets (owner_id) VALUES ({1 + i % 50})" for i in range(3000)],
    )
    spec = Rebuild("pets", PETS)
    con = rebuild_connection(db)
    state = online.start_online(con, spec, "001", str(db), 5000)
    online.copy_online(con, state, str(db), 5000)
    return db, spec, con, state


def test_a_parent_row_deleted_during_an_online_copy_stops_the_cut_over(tmp_path):
    """The new definition adds a foreign key; the application deletes a parent the copy saw."""
    db, spec, con, state = _pets_copied_online(tmp_path)
    app = sqlite3.connect(db, isolation_level=None)
    app.execute("PRAGMA foreign_keys = ON")  # the old pets has no foreign key: nothing stops it
    app.execute("DELETE FROM owners WHERE id = 7")
    before = snapshot(db)
    con.execute("BEGIN IMMEDIATE")
    with pytest.raises(CheckFailed) as err:
        online.cut_over(con, state)
    con.execute("ROLLBACK")
    assert err.value.what == "The rebuild of pets breaks a foreign key"
    assert err.value.why.startswith("over 5 row(s) point to no parent row, first: pets rowid 7 -> owners")
    assert snapshot(db) == before  # nothing swapped
    app.execute("INSERT INTO pets (owner_id) VALUES (1)")  # and the application still writes
    app.execute("DELETE FROM pets WHERE owner_id = 7")  # the orphans are dealt with: it goes on
    state = online.start_online(con, spec, "001", str(db), 5000)
    online.copy_online(con, state, str(db), 5000)
    con.execute("BEGIN IMMEDIATE")
    online.cut_over(con, state)
    con.execute("COMMIT")
    assert _rows(db, "SELECT sql FROM sqlite_schema WHERE name = 'pets'") == [
        ('CREATE TABLE "pets" (id INTEGER PRIMARY KEY, owner_id INTEGER REFERENCES owners(id))',)
    ]
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY constraint failed"):
        app.execute("INSERT INTO pets (owner_id) VALUES (9999)")  # enforced from the cut-over on
    assert _rows(db, "PRAGMA integrity_check") == [("ok",)]
    app.close()
    con.close()


def test_application_connections_with_foreign_keys_on_lose_no_child(tmp_path, config):
    """The migrating connection has foreign_keys off; the application's stay on and keep writing."""
    db = _family(tmp_path)
    app = sqlite3.connect(db, isolation_level=None, timeout=10)
    app.execute("PRAGMA foreign_keys = ON")
    app.execute("INSERT INTO cascade_child (pid) VALUES (3)")
    children = (
        _rows(db, "SELECT * FROM cascade_child ORDER BY id"),
        _rows(db, "SELECT * FROM null_child ORDER BY id"),
    )
    d = migrations_dir(tmp_path, {"001_parent.sql": TARGET})
    apply_migrations(config(db, migrations_dir=d, rebuild_mode="blocking"))
    assert app.execute("PRAGMA foreign_keys").fetchone() == (1,)
    assert (
        _rows(db, "SELECT * FROM cascade_child ORDER BY id"),
        _rows(db, "SELECT * FROM null_child ORDER BY id"),
    ) == (children)
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY constraint failed"):
        app.execute("INSERT INTO cascade_child (pid) VALUES (9999)")  # the new parent is enforced
    app.close()


def test_the_throttle_steers_batches_to_the_budget_and_pauses_half_as_long_as_it_held(monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr(throttle.time, "sleep", slept.append)
    t = throttle.Throttle(budget_s=0.02, rows=2000)
    t.after(Held(waited=0.0, held=0.005, work=0.005))  # four times under budget: at most doubles
    assert t.rows == 4000
    t.after(Held(waited=0.0, held=0.030, work=0.030))  # over budget: shrinks in proportion
    assert t.rows == 2666
    t.after(Held(waited=0.3, held=0.020, work=0.020))  # kept waiting by writers: longer pause
    assert t.rows == 2666
    t.after(Held(waited=0.0, held=0.040, work=0.010))  # a slow COMMIT (sync): not a reason to shrink
    assert t.rows == 5332
    assert slept == pytest.approx([0.0025, 0.015, 0.030, 0.020])  # held / 2, + up to a budget waited


def test_the_cut_over_checks_only_the_rows_and_parents_that_changed_since_the_copy(tmp_path):
    db, spec, con, state = _pets_copied_online(tmp_path)
    app = sqlite3.connect(db, isolation_level=None)
    app.execute("INSERT INTO pets (owner_id) VALUES (9999)")  # no parent: the old pets allows it
    statements: list[str] = []
    con.set_trace_callback(statements.append)
    con.execute("BEGIN IMMEDIATE")
    with pytest.raises(CheckFailed) as err:
        online.cut_over(con, state)
    con.execute("ROLLBACK")
    con.set_trace_callback(None)
    assert err.value.why == "1 row(s) point to no parent row, first: pets rowid 3001 -> owners"
    assert not [s for s in statements if "foreign_key_check" in s]  # no whole-table check in the lock
    # A parent deleted while the copy runs is caught by the check that ends the copy, outside the lock.
    app.execute("DELETE FROM pets WHERE id = 3001")
    app.execute("DELETE FROM owners WHERE id = 8")
    state = online.start_online(con, spec, "001", str(db), 5000)
    with pytest.raises(CheckFailed) as err:
        online.copy_online(con, state, str(db), 5000)
    assert str(err.value) == (
        "The rebuild of pets breaks a foreign key: over 5 row(s) point to no parent row, first: pets rowid 8 "
        "-> owners, pets rowid 58 -> owners, pets rowid 108 -> owners, pets rowid 158 -> owners, "
        "pets rowid 208 -> owners. Try: nothing was swapped; fix those rows (or their parents) and run again"
    )
    assert not con.in_transaction
    app.close()
    con.close()


def test_a_failed_online_rebuild_removes_its_shadow_and_triggers(tmp_path, config):
    from liteshift.tasks.migrate import copy_rebuilds

    db = _db(
        tmp_path / "x.db",
        "CREATE TABLE items (id INTEGER PRIMARY KEY, qty INTEGER)",
        rows=[f"INSERT INTO items (qty) VALUES ({i % 5 + 1})" for i in range(3000)],
    )
    d = migrations_dir(
        tmp_path,
        {
            "001_i.sql": "-- migrate:rebuild items\n"
            "CREATE TABLE items (id INTEGER PRIMARY KEY, qty INTEGER CHECK (qty > 0));\n"
        },
    )
    cfg = config(db, migrations_dir=d, rebuild_mode="online")
    copied = copy_rebuilds(cfg)
    assert [(s.table, s.rows) for s in copied] == [("items", 3000)]
    app = sqlite3.connect(db, isolation_level=None)
    app.execute("UPDATE items SET qty = 0 WHERE id = 5")  # after validation, during the copy
    before = _digest(db, "items")
    with pytest.raises(CheckFailed, match=r"^The rebuild of items failed: CHECK constraint failed: qty > 0"):
        apply_migrations(cfg)
    assert _digest(db, "items") == before and tracked_versions(db) == []
    left = _rows(db, "SELECT name FROM sqlite_schema WHERE name LIKE 'liteshift%' ORDER BY name")
    assert left == [("liteshift_rebuilds",)]  # no shadow, key table or capture trigger
    app.execute("INSERT INTO items (qty) VALUES (3)")
    assert app.execute("SELECT count(*) FROM items").fetchone() == (3001,)
    app.close()


def test_the_old_copy_left_for_the_drop_phase_blocks_no_parent_delete(tmp_path):
    """Until it is emptied (minutes at 10M rows), the old copy of an online rebuild must not hold an
    application with foreign_keys on from deleting a parent whose children it has just deleted."""
    db = _db(
        tmp_path / "fk.db",
        "CREATE TABLE p (id INTEGER PRIMARY KEY)",
        "CREATE TABLE c (id INTEGER PRIMARY KEY, p_id INTEGER REFERENCES p(id), v INTEGER)",
        rows=[f"INSERT INTO p VALUES ({i})" for i in range(1, 51)]
        + [f"INSERT INTO c (p_id, v) VALUES ({i}, {i})" for i in range(1, 51)],
    )
    spec = Rebuild(
        "c", "CREATE TABLE c (id INTEGER PRIMARY KEY, p_id INTEGER REFERENCES p(id), v INTEGER CHECK (v > 0))"
    )
    con = rebuild_connection(db)
    state = online.start_online(con, spec, "001", str(db), 10_000)
    online.copy_online(con, state, str(db), 10_000)
    con.execute("BEGIN IMMEDIATE")
    online.cut_over(con, state)
    con.execute("COMMIT")
    app = sqlite3.connect(db, isolation_level=None, timeout=10)
    app.execute("PRAGMA foreign_keys = ON")
    app.execute("DELETE FROM c WHERE p_id = 5")
    app.execute("DELETE FROM p WHERE id = 5")  # failed with "FOREIGN KEY constraint failed"
    app.close()
    assert _rows(db, "PRAGMA integrity_check") == [("ok",)]
    assert online.drop_old_tables(con, str(db), 10_000) == 50
    con.close()
    assert _rows(db, "PRAGMA foreign_key_check") == []
