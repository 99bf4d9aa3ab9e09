"""Archiving old rows into another SQLite file: what moves, what stays, what is refused, and what a
concurrent application sees. Real files under tmp_path; refusals pin the exact message and prove
the database (and the archive) unchanged."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from helpers import WriterProcess, snapshot

from liteshift.archive import move as archive_module
from liteshift.archive.move import PROGRESS, archive_rows, plan_archive
from liteshift.core.errors import BadInput, CheckFailed
from liteshift.core.progress import Tick
from liteshift.core.sql import quote_ident

CUTOFF = "2024-04-01"  # the demo's dates run from 2024-01-01 over two years: about 1 row in 8 moves


def _db(path: Path, *ddl: str, rows: Iterator[tuple[str, tuple[object, ...]]] | None = None) -> Path:
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode = WAL")
    for stmt in ddl:
        con.execute(stmt)
    con.execute("BEGIN")
    for sql, params in rows or iter(()):
        con.execute(sql, params)
    con.execute("COMMIT")
    con.close()
    return path


def _read(path: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def _keyed(path: Path, table: str, key_width: int = 1, rowid: bool = False) -> dict[Any, tuple[Any, ...]]:
    """Rows by key: the first key_width columns (of `rowid, *` when rowid)."""
    cols = "rowid, *" if rowid else "*"
    rows = _read(path, f"SELECT {cols} FROM {quote_ident(table)}") if path.exists() else []
    return {r[0] if key_width == 1 else r[:key_width]: r for r in rows}


def _assert_split(original: dict[Any, Any], live: dict[Any, Any], archived: dict[Any, Any]) -> None:
    """Every original row is in exactly one of the two files, unchanged."""
    assert live.keys() & archived.keys() == set(), "rows in both files"
    assert {**live, **archived} == original


def _table_sql(path: Path, table: str) -> str:
    return _read(path, "SELECT sql FROM sqlite_schema WHERE name = ?", (table,))[0][0]


def _digest(rows: list[tuple[Any, ...]]) -> str:
    total = sum(int.from_bytes(hashlib.sha256(repr(tuple(r)).encode()).digest(), "big") for r in rows)
    return f"{total % 2**256:064x}"


def test_moves_exactly_the_rows_before_the_cutoff(tmp_path, make_db):
    db = make_db(2000)
    arc = tmp_path / "archive.db"
    original = _keyed(db, "worklogs")
    schema_before = _read(db, "SELECT type, name, sql FROM sqlite_schema ORDER BY name")
    old = {k for k, r in original.items() if r[6] < CUTOFF}
    top = max(original)
    assert 100 < len(old) < 1000 and top not in old  # the demo's highest id is recent: everything old moves
    plan = plan_archive(db, "worklogs", "started", CUTOFF)

    result = archive_rows(db, arc, "worklogs", "started", CUTOFF)

    live, archived = _keyed(db, "worklogs"), _keyed(arc, "worklogs")
    assert set(archived) == old
    _assert_split(original, live, archived)
    assert _table_sql(arc, "worklogs") == _table_sql(db, "worklogs")
    assert _read(db, "SELECT type, name, sql FROM sqlite_schema ORDER BY name") == schema_before
    assert _read(arc, f"SELECT * FROM {PROGRESS}") == []
    assert plan.rows == len(old) and plan.table_rows == 2000 and plan.top_row_kept == 0
    assert plan.key == ["id"] and plan.bytes_method.startswith("dbstat") and (plan.bytes_estimate or 0) > 0
    assert (result.copied, result.deleted, result.kept_changed, result.remaining) == (
        len(old),
        len(old),
        0,
        0,
    )
    assert result.verified and not result.stopped_early and result.key_conflicts == 0
    assert result.digest == _digest(list(archived.values()))  # order-independent, over all columns
    assert result.freed_bytes == 0  # auto_vacuum NONE: the pages stay free for reuse
    assert result.longest_txn_seconds > 0 and result.batches == 1  # measured, never a bound here
    assert result.as_dict()["archive"] == str(arc)
    assert _read(db, "PRAGMA integrity_check") == [("ok",)] == _read(arc, "PRAGMA integrity_check")

    again = archive_rows(db, arc, "worklogs", "started", CUTOFF)
    assert (again.copied, again.deleted, again.remaining, again.verified) == (0, 0, 0, True)
    assert _keyed(arc, "worklogs") == archived


def test_batches_follow_batch_rows_and_progress_reaches_one(tmp_path, make_db):
    db = make_db(2000)
    seen: list[Tick] = []
    result = archive_rows(
        db, tmp_path / "a.db", "worklogs", "started", CUTOFF, batch_rows=50, on_progress=seen.append
    )
    assert result.batches == result.deleted // 50 + 1
    done = [t.done for t in seen]
    assert done == sorted(done) and len(seen) == result.batches
    assert {(t.phase, t.total, t.unit) for t in seen} == {("archive worklogs", seen[-1].done, "rows")}
    assert seen[-1].fraction == 1.0 and seen[-2].fraction < 1.0


def test_the_highest_rowid_stays_so_sqlite_never_reuses_an_archived_key(tmp_path):
    db = _db(
        tmp_path / "t.db",
        "CREATE TABLE t (id INTEGER PRIMARY KEY, started TEXT)",
        rows=((("INSERT INTO t VALUES (?, ?)"), (i, "2020-01-01")) for i in range(1, 11)),
    )
    result = archive_rows(db, tmp_path / "a.db", "t", "started", "2021-01-01")
    assert (result.deleted, result.remaining) == (9, 1)
    assert _read(db, "SELECT id FROM t") == [(10,)]
    con = sqlite3.connect(db)
    assert con.execute("INSERT INTO t (started) VALUES ('2020-06-01')").lastrowid == 11
    con.commit()
    con.close()
    assert archive_rows(db, tmp_path / "a.db", "t", "started", "2021-01-01").deleted == 1  # id 10 now
    # AUTOINCREMENT never hands out an old key: the last row may go too.
    auto = _db(
        tmp_path / "auto.db",
        "CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, started TEXT)",
        rows=((("INSERT INTO t (started) VALUES (?)"), ("2020-01-01",)) for _ in range(10)),
    )
    result = archive_rows(auto, tmp_path / "auto-a.db", "t", "started", "2021-01-01")
    assert (result.deleted, result.remaining) == (10, 0)
    assert _read(tmp_path / "auto-a.db", "SELECT seq FROM sqlite_sequence WHERE name = 't'") == [(10,)]


SHAPES = {
    "without rowid, composite key": (
        'CREATE TABLE "day stats" ("user" TEXT, day TEXT, n INTEGER, note TEXT COLLATE NOCASE, '
        'PRIMARY KEY ("user", day)) WITHOUT ROWID',
        'INSERT INTO "day stats" VALUES (?, ?, ?, ?)',
        lambda i: (f"u{i % 7}", f"202{i % 4}-0{1 + i % 9}-1{i % 10}", i, None if i % 5 else "Note"),
        ("day stats", "day", "2022-01-01", 2, False),
    ),
    "rowid without an integer primary key": (
        "CREATE TABLE notes (body TEXT, created TEXT, weight REAL, data BLOB)",
        "INSERT INTO notes (rowid, body, created, weight, data) VALUES (?, ?, ?, ?, ?)",
        lambda i: (i * 7 + 3, f"n{i}", f"202{i % 4}-05-01", i / 3, bytes([i % 256]) * 3),
        ("notes", "created", "2022-01-01", 1, True),
    ),
    "quoted names with spaces and quotes": (
        'CREATE TABLE "work ""logs""" ("log id" INTEGER PRIMARY KEY, "started at" TEXT NOT NULL, '
        '"secs" INTEGER, "mins" INTEGER GENERATED ALWAYS AS ("secs" / 60) VIRTUAL, '
        '"hours" REAL GENERATED ALWAYS AS ("secs" / 3600.0) STORED)',
        'INSERT INTO "work ""logs""" ("log id", "started at", "secs") VALUES (?, ?, ?)',
        lambda i: (i, f"202{i % 4}-02-0{1 + i % 9} 10:00:00", i * 61),
        ('work "logs"', "started at", "2022-01-01", 1, False),
    ),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_table_shapes_keep_keys_rowids_and_generated_values(tmp_path, shape):
    ddl, insert, values, (table, column, cutoff, width, rowid) = SHAPES[shape]
    db = _db(tmp_path / "s.db", ddl, rows=((insert, values(i)) for i in range(1, 400)))
    original = _keyed(db, table, width, rowid)
    result = archive_rows(db, tmp_path / "a.db", table, column, cutoff, batch_rows=37)
    live, archived = _keyed(db, table, width, rowid), _keyed(tmp_path / "a.db", table, width, rowid)
    _assert_split(original, live, archived)
    col = list(_read(db, f"SELECT name FROM pragma_table_xinfo('{table.replace(chr(39), chr(39) * 2)}')"))
    at = [c[0] for c in col].index(column) + int(rowid)
    assert {k for k, r in original.items() if r[at] < cutoff} - set(archived) <= {max(original)}
    assert len(archived) == result.deleted > 50 and result.verified
    assert _table_sql(tmp_path / "a.db", table) == _table_sql(db, table)


def test_paths_with_uri_characters_open_the_right_files(tmp_path, make_db):
    odd = tmp_path / "odd ?#% dir"
    odd.mkdir()
    db = make_db(2000).rename(odd / "w?x.db")
    original = _keyed(db, "worklogs")
    result = archive_rows(db, odd / "a#1%20.db", "worklogs", "started", CUTOFF)
    assert result.verified and sorted(p.name for p in odd.iterdir()) == ["a#1%20.db", "w?x.db"]
    _assert_split(original, _keyed(db, "worklogs"), _keyed(odd / "a#1%20.db", "worklogs"))


def test_rollback_journal_database_is_archived_too(tmp_path, make_db):
    db = make_db(2000, wal=False)
    original = _keyed(db, "worklogs")
    archive_rows(db, tmp_path / "a.db", "worklogs", "started", CUTOFF)
    _assert_split(original, _keyed(db, "worklogs"), _keyed(tmp_path / "a.db", "worklogs"))
    assert _read(db, "PRAGMA journal_mode") == [("delete",)]


def _hook(monkeypatch: pytest.MonkeyPatch, at: str, action: Callable[[], None]) -> None:
    """Run action the first time the archive passes fault point `at`."""
    real, done = archive_module.faults.point, []

    def point(name: str) -> None:
        if name == at and not done:
            done.append(name)
            action()
        real(name)

    monkeypatch.setattr(archive_module.faults, "point", point)


def _write(db: Path, sql: str, params: tuple[object, ...]) -> None:
    con = sqlite3.connect(db, isolation_level=None, timeout=10)
    try:
        assert con.execute(sql, params).rowcount == 1
    finally:
        con.close()


@pytest.mark.parametrize(
    ("change", "moves_next_run"),
    [
        ("UPDATE worklogs SET time_spent_seconds = 7 WHERE id = ?", True),
        ("UPDATE worklogs SET comment = upper(comment) WHERE id = ?", True),
        ("UPDATE worklogs SET started = '2025-06-01 00:00:00' WHERE id = ?", False),
        ("DELETE FROM worklogs WHERE id = ?", False),
    ],
    ids=["value", "case only", "no longer old", "deleted"],
)
def test_a_row_changed_between_copy_and_delete_stays_live_and_moves_next_run(
    tmp_path, make_db, monkeypatch, change, moves_next_run
):
    db, arc = make_db(2000), tmp_path / "a.db"
    old = [k for k, r in _keyed(db, "worklogs").items() if r[6] < CUTOFF]
    target = old[3]
    _hook(monkeypatch, "archive-copied", lambda: _write(db, change, (target,)))
    expected = _keyed(db, "worklogs")

    first = archive_rows(db, arc, "worklogs", "started", CUTOFF)

    assert (first.kept_changed, first.deleted, first.copied) == (1, len(old) - 1, len(old))
    assert target not in _keyed(arc, "worklogs")  # its stale copy was removed
    changed = _keyed(db, "worklogs").get(target)
    assert (changed is None) == change.startswith("DELETE")
    if changed is not None:
        assert changed != expected[target]
        expected[target] = changed
    else:
        del expected[target]
    assert first.remaining == int(moves_next_run)
    second = archive_rows(db, arc, "worklogs", "started", CUTOFF)
    assert (second.deleted, second.kept_changed, second.remaining) == (int(moves_next_run), 0, 0)
    _assert_split(expected, _keyed(db, "worklogs"), _keyed(arc, "worklogs"))


def _ddl(db: Path, sql: str) -> None:
    con = sqlite3.connect(db, isolation_level=None, timeout=10)
    try:
        con.execute(sql)
    finally:
        con.close()


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (
            "ALTER TABLE worklogs ADD COLUMN reviewed TEXT",
            CheckFailed,
            "The definition of 'worklogs' changed during archiving: the archive's table keeps the "
            "definition the run started with. Try: the rows moved so far are in a.db; archive the rest "
            "into a new file",
        ),
        (
            "CREATE TRIGGER gone AFTER DELETE ON worklogs BEGIN SELECT 1; END",
            BadInput,
            "Table 'worklogs' has DELETE trigger(s) 'gone': they would fire for every archived row as if "
            "the application had deleted it. Try: drop them for the run and recreate them afterwards, or "
            "archive another way; the 0 rows moved before this batch are in a.db",
        ),
    ],
    ids=["new column", "new delete trigger"],
)
def test_a_schema_change_during_the_run_stops_it_before_the_next_delete(
    tmp_path, make_db, monkeypatch, change, error, message
):
    db, arc = make_db(2000), tmp_path / "a.db"
    original = _keyed(db, "worklogs")
    _hook(monkeypatch, "archive-copied", lambda: _ddl(db, change))
    with pytest.raises(error) as err:
        archive_rows(db, arc, "worklogs", "started", CUTOFF, batch_rows=100)
    assert str(err.value) == message
    live = {k: r[:9] for k, r in _keyed(db, "worklogs").items()}
    assert live == original and _keyed(arc, "worklogs") == {}  # the batch's copies were removed
    assert _read(arc, f"SELECT host, pid FROM {PROGRESS}") == [(None, None)]


def test_a_full_archive_stops_before_the_live_table_is_touched(tmp_path, make_db, monkeypatch):
    db, arc = make_db(2000), tmp_path / "a.db"
    original, before = _keyed(db, "worklogs"), snapshot(db)
    real = archive_module._connect

    def small(path: Path, timeout_ms: int, readonly: bool = False) -> sqlite3.Connection:
        con = real(path, timeout_ms, readonly)
        if path == arc and not readonly:
            con.execute("PRAGMA max_page_count = 8")  # the table, bookkeeping, and 3 pages of rows
        return con

    monkeypatch.setattr(archive_module, "_connect", small)
    with pytest.raises(BadInput) as err:
        archive_rows(db, arc, "worklogs", "started", CUTOFF)
    assert str(err.value) == (
        f"The archive {arc} is full: database or disk is full. Try: free space on its disk (or pass "
        "another archive file) and run again: it resumes; this batch was not written, the 0 rows moved "
        "before it are in the archive"
    )
    assert snapshot(db) == before
    assert _read(arc, "SELECT count(*) FROM worklogs") == [(0,)]
    monkeypatch.undo()
    archive_rows(db, arc, "worklogs", "started", CUTOFF)
    _assert_split(original, _keyed(db, "worklogs"), _keyed(arc, "worklogs"))


def test_the_deadline_stops_between_batches_and_a_rerun_resumes(tmp_path, make_db, monkeypatch):
    db, arc = make_db(2000), tmp_path / "a.db"
    original = _keyed(db, "worklogs")
    batches: list[float] = []

    # The archive module's clock jumps two hours once two batches are done.
    clock = SimpleNamespace(
        time=lambda: time.time() + (7200 if len(batches) >= 2 else 0),
        perf_counter=time.perf_counter,
        sleep=time.sleep,
    )
    monkeypatch.setattr(archive_module, "time", clock)
    first = archive_rows(
        db,
        arc,
        "worklogs",
        "started",
        CUTOFF,
        batch_rows=40,
        deadline=time.time() + 3600,
        on_progress=batches.append,
    )
    assert first.stopped_early and (first.batches, first.deleted, first.verified) == (2, 80, True)
    assert first.remaining == len([r for r in original.values() if r[6] < CUTOFF]) - 80
    position, host, pid = _read(arc, f"SELECT position, host, pid FROM {PROGRESS}")[0]
    assert json.loads(position) == [sorted(k for k, r in original.items() if r[6] < CUTOFF)[79]]
    assert (host, pid) == (None, None)  # the next run, from any process, may go on
    monkeypatch.undo()
    second = archive_rows(db, arc, "worklogs", "started", CUTOFF, batch_rows=40)
    assert not second.stopped_early and second.deleted == first.remaining and second.remaining == 0
    assert second.batches == -(-second.deleted // 40) + (second.deleted % 40 == 0)
    _assert_split(original, _keyed(db, "worklogs"), _keyed(arc, "worklogs"))
    assert _read(arc, f"SELECT * FROM {PROGRESS}") == []


def test_free_pages_are_given_back_only_with_incremental_auto_vacuum(tmp_path):
    def build(path: Path, mode: str) -> Path:
        con = sqlite3.connect(path, isolation_level=None)
        con.execute(f"PRAGMA auto_vacuum = {mode}")
        con.execute("PRAGMA journal_mode = WAL")
        con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, started TEXT, body TEXT)")
        con.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 6000) "
            "INSERT INTO t SELECT i, CASE WHEN i < 5000 THEN '2020' ELSE '2030' END, "
            "hex(randomblob(100)) FROM n"
        )
        con.close()
        return path

    inc = build(tmp_path / "inc.db", "INCREMENTAL")
    result = archive_rows(inc, tmp_path / "a.db", "t", "started", "2025")
    size = _read(inc, "PRAGMA page_size")[0][0]
    assert result.freed_bytes > 200 * size and _read(inc, "PRAGMA freelist_count") == [(0,)]
    none = build(tmp_path / "none.db", "NONE")
    result = archive_rows(none, tmp_path / "b.db", "t", "started", "2025")
    assert result.freed_bytes == 0 and _read(none, "PRAGMA freelist_count")[0][0] > 200


# ---------------------------------------------------------------------------------------------
# Refusals: exact message, database (and archive) unchanged, nothing created


def _family(path: Path) -> Path:
    return _db(
        path,
        "CREATE TABLE parent (id INTEGER PRIMARY KEY, started TEXT)",
        "CREATE TABLE child (id INTEGER PRIMARY KEY, pid INTEGER REFERENCES parent(id) ON DELETE CASCADE)",
        "CREATE TABLE tree (id INTEGER PRIMARY KEY, up INTEGER REFERENCES tree(id), started TEXT)",
        "CREATE TABLE logged (id INTEGER PRIMARY KEY, started TEXT)",
        "CREATE TABLE audit (what TEXT)",
        "CREATE TRIGGER \"log delete\" AFTER DELETE ON logged BEGIN INSERT INTO audit VALUES ('gone'); END",
        "CREATE TRIGGER log_insert AFTER INSERT ON logged BEGIN INSERT INTO audit VALUES ('new'); END",
        "CREATE VIEW recent AS SELECT * FROM logged",
        "CREATE TABLE stamps (id INTEGER PRIMARY KEY, started TEXT)",
        rows=iter(
            [
                ("INSERT INTO parent VALUES (1, '2020-01-01 00:00:00')", ()),
                ("INSERT INTO child VALUES (1, 1)", ()),
                ("INSERT INTO logged VALUES (1, '2020-01-01'), (2, '2030-01-01')", ()),
                ("INSERT INTO stamps VALUES (1, '2020-01-01 10:00:00'), (2, '2030-01-01 10:00:00')", ()),
            ]
        ),
    )


REFUSALS = [
    (
        "nosuch",
        "started",
        "2024-01-01",
        "Table 'nosuch' does not exist in f.db: archiving moves the rows of an existing table. "
        "Try: check the table name (give it as it is, without SQL quotes); nothing was written",
    ),
    (
        "logged",
        "created",
        "2024-01-01",
        "Table 'logged' has no column 'created': its columns are id, started. "
        "Try: pass the column that holds each row's date; nothing was written",
    ),
    (
        "parent",
        "started",
        "2024-01-01",
        "Table 'parent' is referenced by a foreign key of 'child': deleting its rows would cascade into "
        "those tables, be refused, or leave their rows pointing at nothing. Try: archive the child "
        "tables ('child') first; liteshift archives only tables no foreign key points to; nothing was "
        "written",
    ),
    (
        "tree",
        "started",
        "2024-01-01",
        "Table 'tree' has a foreign key to itself: deleting an old row would cascade into, be refused "
        "for, or orphan the rows that point to it. Try: archive this table another way; liteshift "
        "archives only tables no foreign key points to; nothing was written",
    ),
    (
        "logged",
        "started",
        "2024-01-01",
        "Table 'logged' has DELETE trigger(s) 'log delete': they would fire for every archived row as if "
        "the application had deleted it. Try: drop them for the run and recreate them afterwards, or "
        "archive another way; nothing was written",
    ),
    (
        "recent",
        "started",
        "2024-01-01",
        "'recent' in f.db is a view, not a table: a view holds no rows of its own. "
        "Try: archive the table the view reads from; nothing was written",
    ),
    (
        "stamps",
        "started",
        "01/04/2024",
        "The cutoff '01/04/2024' is not an ISO-8601 date: started holds ISO-8601 text such as "
        "'2020-01-01 10:00:00', and text compares character by character. Try: write the cutoff like "
        "'2024-01-01' or '2024-01-01 00:00:00'; nothing was written",
    ),
    (
        "stamps",
        "started",
        "2024-01-01T00:00:00",
        "The cutoff '2024-01-01T00:00:00' separates date and time otherwise than started: started holds "
        "text such as '2020-01-01 10:00:00', and text compares character by character. Try: write the "
        "cutoff as '2024-01-01 00:00:00'; nothing was written",
    ),
    (
        "stamps",
        "started",
        " ",
        "The cutoff is empty: rows move when started < the cutoff. "
        "Try: pass a date such as '2024-01-01'; nothing was written",
    ),
]


@pytest.mark.parametrize(("table", "column", "before", "message"), REFUSALS)
def test_refusals_name_the_problem_and_write_nothing(tmp_path, table, column, before, message):
    db = _family(tmp_path / "f.db")
    before_snap = snapshot(db)
    for call in (
        lambda: plan_archive(db, table, column, before),
        lambda: archive_rows(db, tmp_path / "a.db", table, column, before),
    ):
        with pytest.raises(BadInput) as err:
            call()
        assert str(err.value) == message
        assert err.value.exit_code == 2
    assert snapshot(db) == before_snap
    assert not (tmp_path / "a.db").exists()


def test_archive_paths_are_refused_before_anything_is_written(tmp_path):
    db = _family(tmp_path / "f.db")
    before = snapshot(db)
    cases = [
        (
            db,
            f"The archive {db} is the database itself: archiving copies rows into another file, then deletes "
            "them from the database. Try: pass another path for the archive, such as worklogs-archive.db; "
            "nothing was written",
        ),
        (
            tmp_path / "missing" / "a.db",
            f"The archive's directory {tmp_path / 'missing'} does not exist: liteshift creates the archive "
            "file, not its directory. Try: create the directory or pass another archive path; nothing was "
            "written",
        ),
    ]
    text = tmp_path / "notes.txt"
    text.write_text("not a database")
    cases.append(
        (
            text,
            f"The archive {text} is not a SQLite database: it is a directory, or its first bytes are not "
            "the SQLite file header. Try: pass the path of an earlier archive or of a new file; nothing "
            "was written",
        )
    )
    for arc, message in cases:
        with pytest.raises(BadInput) as err:
            archive_rows(db, arc, "stamps", "started", "2024-01-01")
        assert str(err.value) == message
    assert snapshot(db) == before
    assert text.read_text() == "not a database"


def test_an_archive_table_with_another_definition_is_refused(tmp_path):
    db = _family(tmp_path / "f.db")
    arc = _db(tmp_path / "a.db", "CREATE TABLE stamps (id INTEGER PRIMARY KEY, started TEXT, extra TEXT)")
    before, archive_before = snapshot(db), snapshot(arc)
    with pytest.raises(BadInput) as err:
        archive_rows(db, arc, "stamps", "started", "2024-01-01")
    assert str(err.value) == (
        "Table 'stamps' in the archive a.db has another definition: its CREATE TABLE differs from the live "
        "table's (a migration changed one of them). Try: archive into a new file, or give the archive's "
        "table the live definition first; nothing was written"
    )
    assert snapshot(db) == before and snapshot(arc) == archive_before


def test_a_second_run_is_refused_while_another_process_owns_the_table(tmp_path):
    db = _family(tmp_path / "f.db")
    arc = tmp_path / "a.db"
    archive_rows(db, arc, "stamps", "started", "2024-01-01")  # creates the archive's bookkeeping
    other = os.getppid()  # a live process that is not this one
    con = sqlite3.connect(arc, isolation_level=None)
    con.execute(
        f"INSERT INTO {PROGRESS} VALUES ('stamps', 'started', '2025-01-01', NULL, 0, ?, ?, ?)",
        (socket.gethostname(), other, time.time()),
    )
    con.close()
    before = snapshot(db)
    with pytest.raises(BadInput) as err:
        archive_rows(db, arc, "stamps", "started", "2025-01-01")
    assert str(err.value) == (
        f"Another archive run of 'stamps' into a.db is in progress (pid {other} on {socket.gethostname()}): "
        "two runs would fight over the same batches. Try: wait for it to finish, or stop that process and "
        "run again; nothing was written"
    )
    assert snapshot(db) == before
    assert _read(arc, f"SELECT pid FROM {PROGRESS}") == [(other,)]  # the refused run left it alone
    con = sqlite3.connect(arc, isolation_level=None)
    con.execute(f"UPDATE {PROGRESS} SET heartbeat = heartbeat - 3600")  # silent for an hour: dead
    con.close()
    assert archive_rows(db, arc, "stamps", "started", "2025-01-01").verified  # a dead owner is taken over


def test_a_unique_value_taken_in_the_archive_stops_the_batch(tmp_path):
    db = _db(
        tmp_path / "u.db",
        "CREATE TABLE u (id INTEGER PRIMARY KEY, email TEXT UNIQUE, started TEXT)",
        rows=iter([("INSERT INTO u VALUES (1, 'a@x', '2020'), (2, 'b@x', '2030')", ())]),
    )
    arc = tmp_path / "a.db"
    archive_rows(db, arc, "u", "started", "2025")
    _write(db, "INSERT INTO u VALUES (?, 'a@x', '2021')", (3,))
    _write(db, "INSERT INTO u VALUES (?, 'c@x', '2031')", (4,))
    before = snapshot(db)
    with pytest.raises(CheckFailed) as err:
        archive_rows(db, arc, "u", "started", "2025")
    assert str(err.value) == (
        "Rows of 'u' cannot go into the archive a.db: UNIQUE constraint failed: u.email: an archived row "
        "holds the same UNIQUE value as a live row. Try: change the conflicting rows, or archive into a "
        "new file; this batch was not written, the 0 rows moved before it are in the archive"
    )
    assert snapshot(db) == before


def test_a_different_row_under_an_archived_key_stays_live(tmp_path):
    db = _db(
        tmp_path / "k.db",
        "CREATE TABLE k (code TEXT PRIMARY KEY, started TEXT, v INTEGER) WITHOUT ROWID",
        rows=iter([("INSERT INTO k VALUES ('a', '2020', 1), ('b', '2020', 2), ('c', '2030', 3)", ())]),
    )
    arc = tmp_path / "a.db"
    archive_rows(db, arc, "k", "started", "2025")
    _write(db, "INSERT INTO k VALUES (?, '2021', 99)", ("a",))  # a natural key comes back
    result = archive_rows(db, arc, "k", "started", "2025")
    assert (result.deleted, result.key_conflicts, result.remaining) == (0, 1, 1)
    assert _read(arc, "SELECT * FROM k ORDER BY code") == [("a", "2020", 1), ("b", "2020", 2)]
    assert _read(db, "SELECT * FROM k ORDER BY code") == [("a", "2021", 99), ("c", "2030", 3)]


# ---------------------------------------------------------------------------------------------
# A concurrent application


# The application: one statement per commit, busy_timeout 10 s, paced to ~280 commits/s. argv: DB LOG
# STOP READY DONE SEED CUTOFF ARCHIVE DELETES. LOG gets one JSON line per effective commit: ["I"|"U"|"D", id,
# started (None: unchanged), time_spent_seconds]. Inserts and updates write old and new dates; half
# the updates and deletes aim at a key the archive holds as pending (copied, not yet deleted), the
# window where a lost write would hide. Deletes (when DELETES is 1) never take the highest id (SQLite
# would reuse it).
WRITER = r"""
import json, os, random, sqlite3, sys, time

log_path, _errors, stop_path, ready_path, done_path, db, seed, cutoff, arc_path, deletes = sys.argv[1:11]
PACE_S = 0.0035
rng = random.Random(int(seed))
con = sqlite3.connect(db, isolation_level=None, timeout=10.0)
con.execute("PRAGMA busy_timeout = 10000")
con.execute("PRAGMA synchronous = NORMAL")
teams = con.execute("SELECT id, company_id FROM teams").fetchall()
initial = [r[0] for r in con.execute("SELECT id FROM worklogs ORDER BY id")]
mine = []
log = open(log_path, "a", encoding="utf-8")
commits = errors = 0
latencies = []
year = int(cutoff[:4])
arc = None


def pending_id():
    global arc
    try:
        if arc is None and os.path.exists(arc_path):
            arc = sqlite3.connect(f"file:{arc_path}?mode=ro", uri=True, timeout=1.0)
        if arc is None:
            return None
        names = arc.execute("SELECT name FROM sqlite_schema WHERE name LIKE 'liteshift_archive_pending_%'")
        name = names.fetchone()
        ids = arc.execute(f"SELECT k0 FROM {name[0]}").fetchall() if name else []
    except sqlite3.Error:
        return None
    return rng.choice(ids)[0] if ids else None


def when():
    y = year - 1 if rng.random() < 0.5 else year + 1
    return f"{y}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} 12:00:00"


start = time.perf_counter()
while not os.path.exists(stop_path):
    began = time.perf_counter()
    roll, value = rng.random(), rng.randint(60, 28800)
    try:
        if roll < 0.4:
            team, company = rng.choice(teams)
            started = when()
            rowid = con.execute(
                "INSERT INTO worklogs (company_id, team_id, jira_instance, author_email, issue_key, started, "
                "time_spent_seconds, comment) VALUES (?, ?, 'Company Main', 'w@example.com', 'PRJ-1', ?, ?, "
                "'writer')",
                (company, team, started, value),
            ).lastrowid
            mine.append(rowid)
            entry = ["I", rowid, started, value]
        elif roll < 0.9 or deletes == "0":
            rowid = pending_id() if rng.random() < 0.5 else None
            rowid = rowid or rng.choice(mine if mine and rng.random() < 0.5 else initial)
            started = when() if rng.random() < 0.3 else None
            n = con.execute(
                "UPDATE worklogs SET started = coalesce(?, started), time_spent_seconds = ? WHERE id = ?",
                (started, value, rowid),
            ).rowcount
            entry = ["U", rowid, started, value] if n else None
        else:
            rowid = pending_id() if rng.random() < 0.5 else None
            rowid = rowid or rng.choice(initial[:-1])
            n = con.execute("DELETE FROM worklogs WHERE id = ?", (rowid,)).rowcount
            entry = ["D", rowid, None, 0] if n else None
    except sqlite3.Error as exc:
        errors += 1
        continue
    latencies.append(time.perf_counter() - began)
    commits += 1
    if entry:
        log.write(json.dumps(entry) + "\n")
        log.flush()
    if commits == 1:
        open(ready_path, "w").close()
    time.sleep(max(0.0, PACE_S - (time.perf_counter() - began)))
seconds = time.perf_counter() - start
con.close()
latencies.sort()
with open(done_path, "w", encoding="utf-8") as fh:
    json.dump({"commits": commits, "errors": errors, "seconds": seconds,
               "p99": latencies[int(len(latencies) * 0.99)] if latencies else 0,
               "max": latencies[-1] if latencies else 0}, fh)
"""


class Writer(WriterProcess):
    """The application inserting, updating and deleting worklogs; one JSON line per commit."""

    def __init__(
        self, db: Path, arc: Path, work: Path, seed: int, cutoff: str = CUTOFF, deletes: bool = True
    ) -> None:
        super().__init__(WRITER, work, [db, seed, cutoff, arc, int(deletes)])

    def ops(self) -> list[list[Any]]:
        return [json.loads(line) for line in self.lines()]


def expected_rows(original: dict[int, tuple[Any, ...]], ops: list[list[Any]]) -> dict[int, tuple[Any, Any]]:
    """(started, time_spent_seconds) of every row that must exist, from the writer's commits."""
    rows = {k: (r[6], r[7]) for k, r in original.items()}
    for op, rowid, started, value in ops:
        if op == "I":
            assert rowid not in rows, f"id {rowid} was handed out twice"
            rows[rowid] = (started, value)
        elif op == "U":
            rows[rowid] = (started or rows[rowid][0], value)
        else:
            del rows[rowid]
    return rows


def assert_writes_kept(
    db: Path,
    arc: Path,
    original: dict[int, tuple[Any, ...]],
    ops: list[list[Any]],
    commented: frozenset[int] | set[int] = frozenset(),
) -> None:
    """Every row the application committed is in exactly one file, with its last value; rows it
    never touched are unchanged (`commented`: rows whose comment the test itself changed)."""
    live, archived = _keyed(db, "worklogs"), _keyed(arc, "worklogs")
    assert live.keys() & archived.keys() == set(), "rows in both files"
    both = {**live, **archived}
    want = expected_rows(original, ops)
    assert set(both) - set(want) == set(), "rows the application deleted (or never wrote) are present"
    assert set(want) - set(both) == set(), "committed rows are missing"
    wrong = {k: ((both[k][6], both[k][7]), v) for k, v in want.items() if (both[k][6], both[k][7]) != v}
    assert wrong == {}, "rows differ from their last committed value (found, committed)"
    touched = {rowid for _, rowid, _, _ in ops} | commented
    assert [k for k in original if k not in touched and both[k] != original[k]] == []


def _change_a_pending_row(db: Path, arc: Path) -> int:
    """Change the comment (a column the writer never writes) of a row copied and not yet deleted."""
    with contextlib.closing(sqlite3.connect(f"file:{arc}?mode=ro", uri=True)) as a:
        (pending,) = a.execute(
            "SELECT name FROM sqlite_schema WHERE name LIKE 'liteshift_archive_pending_%'"
        ).fetchone()
        keys = [k for (k,) in a.execute(f"SELECT k0 FROM {pending} ORDER BY k0")]
    with contextlib.closing(sqlite3.connect(db, isolation_level=None, timeout=10)) as live:
        for key in keys:
            if live.execute(
                "UPDATE worklogs SET comment = 'changed after its copy' WHERE id = ?", (key,)
            ).rowcount:
                return int(key)
    raise AssertionError(f"no pending row of {pending} is still in the live table")


def test_a_concurrent_writer_loses_and_duplicates_nothing(tmp_path, monkeypatch):
    from liteshift.demo import build_demo_db

    db, arc = build_demo_db(tmp_path / "w.db", 20_000), tmp_path / "a.db"
    real = archive_module.faults.point
    commented: set[int] = set()

    def slow(name: str) -> None:
        if name == "archive-copied":  # a slow machine: the writer gets between a copy and its delete
            time.sleep(0.005)
            if len(commented) < 3:  # and, sure of it rather than by chance, one write of our own
                commented.add(_change_a_pending_row(db, arc))
        real(name)

    monkeypatch.setattr(archive_module.faults, "point", slow)
    cutoff = "2025-04-01"  # 12K old rows: 200 batches of 60 rows, about 2 s beside the writer
    original = _keyed(db, "worklogs")
    writer = Writer(db, arc, tmp_path / "writer", seed=7, cutoff=cutoff)
    try:
        writer.wait_commits(20)
        first = archive_rows(db, arc, "worklogs", "started", cutoff, batch_rows=60)
        writer.wait_commits(20)
    finally:
        summary = writer.stop()
    assert summary is not None and summary["errors"] == 0
    assert first.deleted > 10_000 and first.batches > 150 and first.verified
    assert len(commented) == 3 and first.kept_changed >= 3  # changed between their copy and delete
    ops = writer.ops()
    assert_writes_kept(db, arc, original, ops, commented)
    second = archive_rows(db, arc, "worklogs", "started", cutoff)
    top_is_old = _read(db, "SELECT started < ? FROM worklogs ORDER BY id DESC LIMIT 1", (cutoff,)) == [(1,)]
    assert second.remaining == int(top_is_old) and second.verified  # the highest id stays
    assert_writes_kept(db, arc, original, ops, commented)
    assert _read(db, "PRAGMA integrity_check") == [("ok",)] == _read(arc, "PRAGMA integrity_check")
