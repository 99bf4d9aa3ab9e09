"""Undo never loses a write: for each kind of change, an application INSERT, UPDATE and DELETE
committed after the migration is still there after the rollback, or the rollback refused and
nothing changed."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from helpers import migrations_dir, snapshot, tracked_versions, user_snapshot

from liteshift.core import faults
from liteshift.core.errors import RollbackRefused
from liteshift.tasks.backup import backup_database
from liteshift.tasks.migrate import apply_migrations
from liteshift.tasks.rollback import rollback_database
from liteshift.tasks.validate import validate_database

RATES_SQL = """CREATE TABLE billing_rates (
   "id" INTEGER PRIMARY KEY,
   "billing_project_id" INTEGER NOT NULL REFERENCES "billing_projects"("id"),
   "user_email" TEXT NOT NULL,
   "issue_type" TEXT NOT NULL,
   {last}
);"""
# Each kind of change: (migration file, rebuild mode, how the rollback undoes it).
KINDS = {
    "index-only": (
        "-- migrate:up\nCREATE INDEX idx_secs ON billing_rates(rate_cents);\n",
        "auto",
        "derived-down",
    ),
    "added-column": (
        "-- migrate:up\nALTER TABLE billing_rates ADD COLUMN currency TEXT;\n",
        "auto",
        "derived-down",
    ),
    "blocking-rebuild": (
        "-- migrate:rebuild billing_rates\n"
        + RATES_SQL.format(last='"rate_cents" INTEGER NOT NULL, "currency" TEXT')
        + "\n",
        "blocking",
        "derived-down",
    ),
    "online-rebuild": (
        "-- migrate:rebuild billing_rates\n"
        + RATES_SQL.format(last='"rate_cents" INTEGER NOT NULL CHECK ("rate_cents" >= 0)')
        + "\n",
        "online",
        "derived-down",
    ),
    "online-rename": (
        "-- migrate:rebuild billing_rates\n"
        + RATES_SQL.format(last='"rate" INTEGER NOT NULL')
        + "\n-- migrate:columns\n-- rate = rate_cents\n",
        "online",
        "derived-down",
    ),
    "dropped-column": (
        "-- migrate:rebuild billing_rates\n" + RATES_SQL.format(last='"note" TEXT') + "\n",
        "blocking",
        "restore",
    ),
    "data-change": (
        "-- migrate:up\nUPDATE billing_rates SET rate_cents = rate_cents + 1 WHERE id <= 10;\n",
        "auto",
        "restore",
    ),
}
# The application's writes to billing_rates after the migration, whatever its columns are now.
WRITES = {
    "insert": "INSERT INTO billing_rates (id, billing_project_id, user_email, issue_type{extra}) "
    "VALUES (5000, 1, 'app-insert@example.com', 'Bug'{value})",
    "update": "UPDATE billing_rates SET user_email = 'APP-UPDATE-1' WHERE id = 5",
    "delete": "DELETE FROM billing_rates WHERE id = 7",
    # Same row count, same max rowid: a row deleted and written again under its rowid.
    "replace": "INSERT OR REPLACE INTO billing_rates (id, billing_project_id, user_email, issue_type{extra}) "
    "VALUES (9, 1, 'app-replace@example.com', 'Bug'{value})",
}


def _apply(db: Path, config, tmp_path: Path, kind: str, window_h: float = 24.0):
    sql, mode, _ = KINDS[kind]
    d = migrations_dir(tmp_path, {"001_change.sql": sql})
    cfg = config(db, migrations_dir=d, backup_dir=tmp_path, rebuild_mode=mode, revert_window_h=window_h)
    b = backup_database(cfg, watch_writes=True)
    apply_migrations(cfg, backup_path=b.path)
    return d, b


def _app_write(db: Path, write: str) -> None:
    with sqlite3.connect(db) as con:
        cols = {r[1] for r in con.execute("PRAGMA table_info(billing_rates)")}
        needed = [c for c in ("rate_cents", "rate") if c in cols]
        extra = f", {needed[0]}" if needed else ""
        con.execute(WRITES[write].format(extra=extra, value=", 123" if needed else ""))


def _rate_row(db: Path, rowid: int) -> tuple[object, ...] | None:
    with sqlite3.connect(db) as con:
        return con.execute(
            "SELECT user_email, rate_cents FROM billing_rates WHERE id = ?", (rowid,)
        ).fetchone()


COMMON = {  # the columns the table has both now and in the backup
    "dropped-column": "[id], [billing_project_id], [user_email], [issue_type]",
    "data-change": "[id], [billing_project_id], [user_email], [issue_type], [rate_cents]",
}
DERIVED = [k for k, v in KINDS.items() if v[2] == "derived-down"]
RESTORED = [k for k, v in KINDS.items() if v[2] == "restore"]


@pytest.mark.parametrize("write", list(WRITES))
@pytest.mark.parametrize("kind", DERIVED)
def test_a_derived_down_keeps_every_write(make_db, config, tmp_path: Path, kind: str, write: str) -> None:
    db = make_db()
    schema_before = {k: v for k, v in user_snapshot(db).items() if k.startswith("schema:")}
    d, _ = _apply(db, config, tmp_path, kind)
    _app_write(db, write)
    r = rollback_database(db, d)
    assert r.action == "derived-down"
    assert r.message == (
        "ran the derived down of 001_change (no down section; liteshift recorded the inverse of each "
        "step when it applied it); every write since the migration is kept"
    )
    assert {k: v for k, v in user_snapshot(db).items() if k.startswith("schema:")} == schema_before
    assert tracked_versions(db) == []
    expected = {
        "insert": (5000, ("app-insert@example.com", 123)),
        "update": (5, "APP-UPDATE-1"),
        "delete": (7, None),
        "replace": (9, ("app-replace@example.com", 123)),
    }[write]
    row = _rate_row(db, expected[0])
    assert (row[0] if write == "update" and row else row) == expected[1]


@pytest.mark.parametrize("write", list(WRITES))
@pytest.mark.parametrize("kind", RESTORED)
def test_a_restore_over_a_write_is_refused_and_changes_nothing(
    make_db, config, tmp_path: Path, kind: str, write: str
) -> None:
    db = make_db()
    d, b = _apply(db, config, tmp_path, kind)
    _app_write(db, write)
    before = snapshot(db)
    with pytest.raises(RollbackRefused) as err:
        rollback_database(db, d)
    # A REPLACE's implicit delete fires no DELETE trigger (recursive_triggers off); its INSERT does.
    count = 1
    assert str(err.value) == (
        "Refusing to restore the backup over newer writes: written or changed since the migration: "
        f"billing_rates ({count} row write(s) since the migration); restoring {b.path} would discard "
        "that. Try: keep the database as it is (the migration stays applied), or move those rows by "
        f"hand: sqlite3 {db} \"ATTACH '{b.path}' AS b; SELECT {COMMON[kind]} FROM main.[billing_rates] "
        f'EXCEPT SELECT {COMMON[kind]} FROM b.[billing_rates];"'
    )
    assert snapshot(db) == before


@pytest.mark.parametrize("kind", RESTORED)
def test_a_restore_keeps_the_writes_to_tables_the_migration_did_not_touch(
    make_db, config, tmp_path: Path, kind: str
) -> None:
    db = make_db()
    original = user_snapshot(db)
    d, b = _apply(db, config, tmp_path, kind)
    with sqlite3.connect(db) as con:
        con.execute("UPDATE companies SET name = 'APP-UPDATE-2' WHERE id = 3")
        con.execute("DELETE FROM invoices WHERE id = 4")
        con.execute("INSERT INTO teams (company_id, name) VALUES (1, 'APP-INSERT')")
    r = rollback_database(db, d)
    assert (r.action, r.undone) == ("restore", ["001"])
    why = {
        "data-change": "001_change.sql has no down section and its up has no derived down",
        "dropped-column": "001_change.sql rebuilds billing_rates dropping a column or filling one from "
        "an expression, whose old values only the backup has",
    }[kind]
    restored = {"data-change": "billing_rates (10 row(s))", "dropped-column": "billing_rates"}[kind]
    assert r.message == (
        f"restored from the backup {b.path}: {restored}; the write ledger proved, under the same "
        f"write lock, that nothing was written to them since the migration ({why})"
    )
    now = user_snapshot(db)
    assert now["rows:billing_rates"] == original["rows:billing_rates"]
    assert now["schema:table:billing_rates"] == original["schema:table:billing_rates"]
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT name FROM companies WHERE id = 3").fetchone() == ("APP-UPDATE-2",)
        assert con.execute("SELECT count(*) FROM invoices WHERE id = 4").fetchone() == (0,)
        assert con.execute("SELECT count(*) FROM teams WHERE name = 'APP-INSERT'").fetchone() == (1,)
        leftovers = con.execute("SELECT name FROM sqlite_schema WHERE name LIKE 'liteshift_w%'").fetchall()
    assert leftovers == [], "the write ledger goes once no proof needs it"


def test_a_write_between_the_backup_and_the_migration_leaves_no_proof(
    make_db, config, tmp_path: Path
) -> None:
    db = make_db()
    d = migrations_dir(tmp_path, {"001_change.sql": KINDS["data-change"][0]})
    cfg = config(db, migrations_dir=d, backup_dir=tmp_path)
    b = backup_database(cfg, watch_writes=True)
    with sqlite3.connect(db) as con:  # same row count, same max rowid: only the ledger sees it
        con.execute("UPDATE billing_rates SET user_email = 'between' WHERE id = 2")
    apply_migrations(cfg, backup_path=b.path)
    before = snapshot(db)
    with pytest.raises(RollbackRefused) as err:
        rollback_database(db, d)
    assert str(err.value) == (
        f"Refusing to restore the backup {b.path}: liteshift cannot prove that no write since the "
        "migration would be lost: table billing_rates was written between the backup and the migration's "
        "lock. Try: keep the database as it is, or write a down section for the migration and run "
        "'liteshift rollback' again (a down keeps every row written since)"
    )
    assert snapshot(db) == before


def test_a_dropped_ledger_trigger_is_not_a_proof(make_db, config, tmp_path: Path) -> None:
    db = make_db()
    d, _ = _apply(db, config, tmp_path, "data-change")
    with sqlite3.connect(db) as con:
        name = con.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'trigger' AND name LIKE 'liteshift_w_%_u'"
        ).fetchone()[0]
        con.execute(f"DROP TRIGGER {name}")
        con.execute("UPDATE billing_rates SET user_email = 'unseen' WHERE id = 3")
    before = snapshot(db)
    with pytest.raises(RollbackRefused) as err:
        rollback_database(db, d)
    assert "billing_rates (its write-ledger triggers are gone)" in str(err.value)
    assert snapshot(db) == before


def test_the_proof_and_the_restore_hold_one_write_lock(make_db, config, tmp_path: Path, monkeypatch) -> None:
    db = make_db()
    d, _ = _apply(db, config, tmp_path, "data-change")
    seen: dict[str, str] = {}
    real = faults.point

    def probe(name: str) -> None:
        if name in ("rollback-before-restore", "rollback-restoring"):
            other = sqlite3.connect(db, timeout=0, isolation_level=None)
            try:
                other.execute("UPDATE billing_rates SET user_email = 'slipped in' WHERE id = 1")
                seen[name] = "written"
            except sqlite3.OperationalError as exc:
                seen[name] = str(exc)
            finally:
                other.close()
        real(name)

    monkeypatch.setattr(faults, "point", probe)
    assert rollback_database(db, d).action == "restore"
    assert seen == {
        "rollback-before-restore": "database is locked",
        "rollback-restoring": "database is locked",
    }


def test_a_rename_undoes_by_the_reverse_mapping(make_db, config, tmp_path: Path) -> None:
    db = make_db()
    d, _ = _apply(db, config, tmp_path, "online-rename")
    with sqlite3.connect(db) as con:
        con.execute("UPDATE billing_rates SET rate = 4242 WHERE id = 11")
        record = json.loads(
            con.execute("SELECT fingerprint FROM liteshift_migrations WHERE version = '001'").fetchone()[0]
        )
    assert record["undo"] == "derived" and record["proof"] is None
    assert record["down"][0]["columns"] == [["rate_cents", '"rate"']]
    rollback_database(db, d)
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT rate_cents FROM billing_rates WHERE id = 11").fetchone() == (4242,)


def test_a_down_section_still_wins_over_the_derived_down(make_db, config, tmp_path: Path) -> None:
    db = make_db()
    d = migrations_dir(
        tmp_path,
        {
            "001_i.sql": "-- migrate:up\nCREATE INDEX i ON worklogs(team_id);\n"
            "-- migrate:down\nDROP INDEX i;\n"
        },
    )
    apply_migrations(config(db, migrations_dir=d))
    r = rollback_database(db, d)
    assert (r.action, r.message) == ("down", "ran the down of 001_i")


SHOP = """
CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT NOT NULL);
CREATE TABLE "order items" (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    "order id" INTEGER NOT NULL REFERENCES orders(id) ON DELETE CASCADE,
    "unit price" REAL NOT NULL
);
CREATE TABLE tags (name TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX "items by order" ON "order items"("order id");
CREATE VIEW "order totals" AS SELECT "order id", sum("unit price") AS total FROM "order items" GROUP BY 1;
CREATE TRIGGER "count tag" AFTER INSERT ON "order items"
    BEGIN UPDATE tags SET n = n + 1 WHERE name = 'items'; END;
"""


def _shop(tmp_path: Path) -> Path:
    """A database nobody here designed: spaces in names, a view, a trigger, AUTOINCREMENT, a
    cascading foreign key, a WITHOUT ROWID table."""
    db = tmp_path / "shop.db"
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA journal_mode = WAL")
    con.executescript(SHOP)  # test set-up, not a migration
    con.execute("INSERT INTO tags VALUES ('items', 0), ('vip', 3)")
    for i in range(1, 41):
        con.execute("INSERT INTO orders (id, customer) VALUES (?, ?)", (i, f"c{i}"))
        con.execute('INSERT INTO "order items" ("order id", "unit price") VALUES (?, ?)', (i, i * 1.5))
    con.execute('DELETE FROM "order items" WHERE id > 35')  # the sequence stays ahead of max(id)
    con.close()
    return db


def _schema(db: Path) -> dict[str, str]:
    """The user's schema; a rebuilt table's text from its "(" (the rename quotes its name)."""
    return {
        k: v[v.find("(") :] if k.startswith("schema:table:") else v
        for k, v in user_snapshot(db).items()
        if k.startswith("schema:")
    }


def _shop_run(db: Path, config, tmp_path: Path, sql: str):
    d = migrations_dir(tmp_path, {"001_shop.sql": sql})
    cfg = config(db, migrations_dir=d, backup_dir=tmp_path)
    b = backup_database(cfg, watch_writes=True)
    apply_migrations(cfg, backup_path=b.path)
    return d


def test_a_restore_on_a_real_schema_gives_back_exactly_the_original(make_db, config, tmp_path: Path) -> None:
    db = _shop(tmp_path)
    original = snapshot(db)
    d = _shop_run(
        db,
        config,
        tmp_path,
        '-- migrate:up\nUPDATE "order items" SET "unit price" = "unit price" * 2;\n'
        "UPDATE tags SET n = 0 WHERE name = 'vip';\nDROP VIEW \"order totals\";\n"
        'INSERT INTO "order items" ("order id", "unit price") VALUES (1, 9.5);\n',
    )
    with sqlite3.connect(db) as con:  # the application writes a table the migration did not touch
        con.execute("INSERT INTO orders (id, customer) VALUES (100, 'after')")
    r = rollback_database(db, d)
    assert r.action == "restore"
    assert r.message.startswith(f"restored from the backup {tmp_path}/shop.db.backup-")
    # Only the rows the migration wrote are put back (35 updated, 1 inserted); tags, WITHOUT ROWID,
    # is copied back whole.
    assert ": tags, order items (36 row(s)); the write ledger proved" in r.message, r.message
    now = snapshot(db)
    for key, value in original.items():
        if key != "rows:orders":
            assert now[key] == value, key  # schema, rows and sqlite_sequence as before
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT customer FROM orders WHERE id = 100").fetchone() == ("after",)
        assert con.execute("PRAGMA foreign_key_check").fetchall() == []


def test_a_cascade_into_a_migrated_table_is_seen_and_refused(make_db, config, tmp_path: Path) -> None:
    db = _shop(tmp_path)
    d = _shop_run(
        db, config, tmp_path, '-- migrate:up\nUPDATE "order items" SET "unit price" = 0 WHERE id = 1;\n'
    )
    with sqlite3.connect(db) as con:
        con.execute("PRAGMA foreign_keys = ON")
        con.execute("DELETE FROM orders WHERE id = 2")  # cascades into "order items"
    before = snapshot(db)
    with pytest.raises(RollbackRefused) as err:
        rollback_database(db, d)
    assert "order items (1 row write(s) since the migration)" in str(err.value)
    assert snapshot(db) == before


def test_derived_downs_on_a_real_schema(make_db, config, tmp_path: Path) -> None:
    db = _shop(tmp_path)
    schema = _schema(db)
    d = _shop_run(
        db,
        config,
        tmp_path,
        '-- migrate:up\nALTER TABLE "order items" RENAME COLUMN "unit price" TO price;\n'
        'CREATE INDEX "by price" ON "order items"(price);\nDROP TRIGGER "count tag";\n'
        "-- migrate:rebuild tags\n"
        "CREATE TABLE tags (name TEXT PRIMARY KEY, count INTEGER NOT NULL) WITHOUT ROWID;\n"
        "-- migrate:columns\n-- count = n\n"
        '-- migrate:up\nCREATE TRIGGER "count tag" AFTER INSERT ON "order items"\n'
        "    BEGIN UPDATE tags SET count = count + 1 WHERE name = 'items'; END;\n",
    )
    with sqlite3.connect(db) as con:
        con.execute('INSERT INTO "order items" ("order id", price) VALUES (3, 7.25)')  # fires "count tag"
        con.execute("UPDATE tags SET count = count + 10 WHERE name = 'vip'")
    r = rollback_database(db, d)
    assert r.action == "derived-down"
    assert _schema(db) == schema
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT name, n FROM tags ORDER BY name").fetchall() == [
            ("items", 41),
            ("vip", 13),
        ]
        assert con.execute(
            'SELECT "unit price" FROM "order items" WHERE "order id" = 3 ORDER BY id DESC'
        ).fetchone() == (7.25,)


def test_an_index_that_was_there_before_is_kept_by_the_derived_down(make_db, config, tmp_path: Path) -> None:
    db = make_db()
    before = user_snapshot(db)
    d = migrations_dir(
        tmp_path,
        {"001_same.sql": 'CREATE INDEX IF NOT EXISTS "idx_worklogs_company" ON "worklogs" ("company_id");\n'},
    )
    (d / "001_same.sql").write_text("-- migrate:up\n" + (d / "001_same.sql").read_text())
    apply_migrations(config(db, migrations_dir=d))
    r = rollback_database(db, d)
    assert r.action == "derived-down" and r.verified[1] == "created indexes gone"
    assert user_snapshot(db) == before  # idx_worklogs_company is still there, as before


def test_a_restore_that_would_orphan_a_child_row_is_refused(make_db, config, tmp_path: Path) -> None:
    db = make_db()
    d = migrations_dir(
        tmp_path,
        {"001_team.sql": "-- migrate:up\nINSERT INTO teams (id, company_id, name) VALUES (500, 1, 'new');\n"},
    )
    cfg = config(db, migrations_dir=d, backup_dir=tmp_path)
    b = backup_database(cfg, watch_writes=True)
    apply_migrations(cfg, backup_path=b.path)
    with sqlite3.connect(db) as con:  # worklogs is not the migration's: the application may write it
        con.execute("UPDATE worklogs SET team_id = 500 WHERE id = 3")
    before = snapshot(db)
    with pytest.raises(RollbackRefused) as err:
        rollback_database(db, d)
    assert str(err.value) == (
        "Refusing to restore the backup: the restored rows would break foreign keys: worklogs rows with "
        "team_id = 500 (a parent row only the migration had). Try: keep the database as it is, or fix "
        "those rows and run 'liteshift rollback' again"
    )
    assert snapshot(db) == before


def _codes(tmp_path: Path) -> Path:
    """A table with a UNIQUE column besides its key, and a trigger that writes another table."""
    db = tmp_path / "codes.db"
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("CREATE TABLE u (id INTEGER PRIMARY KEY, code TEXT UNIQUE, v INTEGER)")
    con.execute("CREATE TABLE audit (what TEXT)")
    con.execute("CREATE TABLE other (x)")
    con.execute(
        "CREATE TRIGGER u_audit AFTER INSERT ON u BEGIN INSERT INTO audit VALUES ('insert ' || NEW.code); END"
    )
    con.executemany("INSERT INTO u (id, code, v) VALUES (?, ?, ?)", [(i, f"c{i}", i) for i in range(1, 21)])
    con.close()
    return db


@pytest.mark.parametrize(
    "up",
    [
        "INSERT OR REPLACE INTO u (id, code, v) VALUES (30, 'c1', 99);",  # replaces row 1 through code
        "UPDATE u SET v = -v WHERE id <= 12;",
        "DELETE FROM u WHERE id IN (4, 5);\nINSERT INTO u (id, code, v) VALUES (4, 'new', 0);",
    ],
)
def test_a_row_level_restore_gives_back_exactly_the_rows_the_migration_wrote(
    config, tmp_path: Path, up: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from liteshift.migrate import restore

    monkeypatch.setattr(restore, "MAX_ROW_KEYS", 10)  # more rows than this: the whole table
    db = _codes(tmp_path)
    original = user_snapshot(db)
    d = _shop_run(db, config, tmp_path, f"-- migrate:up\n{up}\n")
    with sqlite3.connect(db) as con:  # the application writes a table the migration did not touch
        con.execute("INSERT INTO other VALUES ('app')")
    r = rollback_database(db, d)
    whole = "UPDATE" in up  # 12 rows written: more than MAX_ROW_KEYS
    assert (" u (" in r.message) is not whole, r.message  # "u (N row(s))" when restored by rows
    now = user_snapshot(db)
    # u and audit as before (the restore fired none of u's triggers); the application's row kept.
    assert {k: v for k, v in now.items() if k != "rows:other"} == {
        k: v for k, v in original.items() if k != "rows:other"
    }
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT x FROM other").fetchall() == [("app",)]


@pytest.mark.parametrize(
    "up",
    [
        "ALTER TABLE u RENAME COLUMN code TO kode;",
        "ALTER TABLE u RENAME TO u2;",
        "DROP INDEX sqlite_autoindex_u_1;",
        "UPDATE u SET code = code || '!' WHERE id = 1;\nALTER TABLE u ADD COLUMN w TEXT;",
    ],
)
def test_the_key_capture_stays_out_of_the_way_of_schema_changes(config, tmp_path: Path, up: str) -> None:
    """The capture's TEMP triggers name the table and its UNIQUE columns; a rename or an added
    column in the same migration must still apply, and the rollback still undo it."""
    db = _codes(tmp_path)
    original = user_snapshot(db)
    d = migrations_dir(tmp_path, {"001_shop.sql": f"-- migrate:up\n{up}\n"})
    cfg = config(db, migrations_dir=d, backup_dir=tmp_path)
    b = backup_database(cfg, watch_writes=True)
    if up.startswith("DROP INDEX"):  # an automatic index cannot be dropped: the up fails, nothing changes
        with pytest.raises(Exception, match="cannot be dropped"):
            apply_migrations(cfg, backup_path=b.path)
        assert tracked_versions(db) == []
        return
    validate_database(cfg)  # the rehearsal finds the derived down undoes the up
    apply_migrations(cfg, backup_path=b.path)
    rollback_database(db, d)
    # SQLite quotes what a rename rewrites ("code"): the same schema, compared by meaning.
    assert _meaning(user_snapshot(db)) == _meaning(original)


def _meaning(snap: dict[str, str]) -> dict[str, str]:
    from liteshift.core.sql import same_sql_text

    return {k: same_sql_text(v) if k.startswith("schema:") else v for k, v in snap.items()}


def test_the_ledger_watches_only_what_the_migrations_may_write(config, tmp_path: Path) -> None:
    """The rehearsal names the tables the ups write, through the table's own triggers too: only
    those pay for the ledger's triggers, and only when the backup is the undo."""
    db = _codes(tmp_path)
    cases = {
        "-- migrate:up\nINSERT INTO u (id, code, v) VALUES (99, 'x', 1);\n": ["audit", "u"],  # u_audit
        "-- migrate:up\nUPDATE other SET x = 1;\n": ["other"],
        "-- migrate:up\nUPDATE other SET x = 1;\n-- migrate:down\nUPDATE other SET x = NULL;\n": [],
        "-- migrate:up\nCREATE INDEX ix ON u(v);\n": [],  # a derived down
    }
    for sql, watched in cases.items():
        d = migrations_dir(tmp_path, {"001_w.sql": sql})
        assert validate_database(config(db, migrations_dir=d)).watch_tables == watched, sql


@pytest.mark.parametrize("window_h", [24.0, 0.0])
def test_an_online_revert_keeps_every_write_of_a_concurrent_writer(
    make_db, config, tmp_path: Path, window_h: float
) -> None:
    """An online rebuild undone by an online rebuild back while the application inserts, updates
    and deletes: with a revert window, its kept old copy only replays what changed since; without,
    the rows are copied again outside the write lock. The downs' transaction only drains the last
    changes and swaps. No commit is lost, none duplicated, before or after the migration."""
    import random
    import threading
    import time

    db = make_db(rows=40_000)  # billing_rates: 10,000 rows
    d, _ = _apply(db, config, tmp_path, "online-rebuild", window_h)
    schema_before = {
        k: v for k, v in user_snapshot(db).items() if k == "schema:index:idx_billing_rates_project"
    }
    stop = threading.Event()
    log: list[tuple[str, int, str]] = []

    def writer() -> None:
        w = sqlite3.connect(db, isolation_level=None, timeout=10)
        rnd, i = random.Random(3), 0
        while not stop.is_set():
            i += 1
            pick, key = rnd.random(), rnd.randint(1, 10_000)
            if pick < 0.4:
                w.execute(
                    "INSERT INTO billing_rates (id, billing_project_id, user_email, issue_type, rate_cents) "
                    "VALUES (?, 1, ?, 'Bug', 5)",
                    (100_000 + i, f"w{i}"),
                )
                log.append(("I", 100_000 + i, f"w{i}"))
            elif pick < 0.8:
                if w.execute("UPDATE billing_rates SET user_email = ? WHERE id = ?", (f"u{i}", key)).rowcount:
                    log.append(("U", key, f"u{i}"))
            elif w.execute("DELETE FROM billing_rates WHERE id = ?", (key,)).rowcount:
                log.append(("D", key, ""))
            time.sleep(0.002)
        w.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(0.1)
        r = rollback_database(db, d, rebuild_mode="online")
        time.sleep(0.1)  # the application writes to the table as it was before the migration
    finally:
        stop.set()
        thread.join()
    import re

    found = re.search(
        r"billing_rates rebuilt back online \(([\d,]+) rows copied, ([\d,]+) changed", r.message
    )
    assert r.action == "derived-down" and found, r.message
    copied = int(found.group(1).replace(",", ""))
    assert copied == 0 if window_h else copied >= 10_000  # the kept copy replays; else copied anew
    assert len(log) > 50
    expected: dict[int, str | None] = {}
    for op, key, value in log:
        expected[key] = None if op == "D" else value
    with sqlite3.connect(db) as con:
        rows = dict(con.execute("SELECT id, user_email FROM billing_rates"))
        sql = con.execute("SELECT sql FROM sqlite_schema WHERE name = 'billing_rates'").fetchone()[0]
        left = [
            n
            for (n,) in con.execute("SELECT name FROM sqlite_schema")
            if n.startswith(("liteshift_new_", "liteshift_changes_", "liteshift_capture_", "liteshift_old_"))
        ]
    assert {k: rows.get(k) for k in expected} == expected  # every committed write, exactly once
    assert len(rows) == 10_000 + sum(op == "I" for op, _, _ in log) - sum(op == "D" for op, _, _ in log)
    assert "CHECK" not in sql and tracked_versions(db) == []
    assert left == [] and {k: v for k, v in user_snapshot(db).items() if k in schema_before} == schema_before


@pytest.mark.parametrize("mode", ["blocking", "online"])
def test_a_write_the_old_definition_refuses_is_named_and_nothing_changes(
    make_db, config, tmp_path: Path, mode: str
) -> None:
    db = make_db()
    relaxed = RATES_SQL.replace('"user_email" TEXT NOT NULL', '"user_email" TEXT').format(
        last='"rate_cents" INTEGER NOT NULL'
    )
    d = migrations_dir(tmp_path, {"001_relax.sql": f"-- migrate:rebuild billing_rates\n{relaxed}\n"})
    apply_migrations(config(db, migrations_dir=d, rebuild_mode=mode))
    with sqlite3.connect(db) as con:  # allowed now, not before the migration
        con.execute("UPDATE billing_rates SET user_email = NULL WHERE id IN (7, 9)")
    before = snapshot(db)
    with pytest.raises(RollbackRefused) as err:
        rollback_database(db, d, rebuild_mode=mode)
    assert str(err.value) == (
        "Cannot rebuild billing_rates back to its definition before 001_relax.sql: rows of billing_rates "
        'break it: "user_email" NOT NULL: 2 row(s), first: rowid 7, rowid 9. Try: those rows were '
        "written after the migration: change them so that the old definition holds them, or keep the "
        "migration; nothing was changed"
    )
    assert snapshot(db) == before


def _kept(db: Path) -> list[str]:
    with sqlite3.connect(db) as con:
        return sorted(
            n
            for (n,) in con.execute("SELECT name FROM sqlite_schema")
            if n.startswith(("liteshift_new_", "liteshift_changes_", "liteshift_capture_", "liteshift_old_"))
        )


def test_a_revert_window_stays_open_until_it_is_over_or_finished(make_db, config, tmp_path: Path) -> None:
    from liteshift.rebuild import online
    from liteshift.tasks.rollback import finish_undo

    db = make_db()
    _apply(db, config, tmp_path, "online-rebuild")  # a 24 h window
    kept = _kept(db)
    assert [k for k in kept if k.startswith("liteshift_new_")] and [k for k in kept if "capture" in k]
    assert online.finish_leftovers(str(db), 5000) == []  # a run with nothing to do keeps it
    assert _kept(db) == kept
    message = finish_undo(db)
    assert message.startswith("ended the revert window of billing_rates: its old copy is dropped (undo-001:")
    assert _kept(db) == []
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT count(*) FROM billing_rates").fetchone() == (1000,)


def test_an_expired_revert_window_is_ended_by_the_next_run(make_db, config, tmp_path: Path) -> None:
    from liteshift.rebuild import online

    db = make_db()
    d, _ = _apply(db, config, tmp_path, "online-rebuild", window_h=1e-9)  # over at once
    assert _kept(db) != []
    done = online.finish_leftovers(str(db), 5000)
    assert done[0].startswith("ended the revert window of billing_rates") and _kept(db) == []
    r = rollback_database(db, d)  # still undone, by a rebuild back from scratch
    assert r.action == "derived-down" and tracked_versions(db) == []
