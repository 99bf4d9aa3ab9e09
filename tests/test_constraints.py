"""Constraints of a new table definition, and the live rows a rebuild would break (read-only)."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from liteshift.core.errors import BadInput
from liteshift.rebuild.constraints import (
    Constraint,
    Violation,
    find_violations,
    new_constraints,
    table_constraints,
)

OLD_WORKLOGS = """CREATE TABLE worklogs (
    id INTEGER PRIMARY KEY,
    company_id INTEGER NOT NULL REFERENCES companies (id),
    team_id INTEGER,
    author_email TEXT,
    time_spent_seconds INTEGER,
    comment TEXT
)"""
# id, company_id, team_id, author_email, time_spent_seconds, comment
WORKLOGS = [
    (1, 1, None, "u1@x", 60, "ok"),
    (2, 1, 1, None, 30, "x"),
    (3, 1, 1, "a@x", 10, None),
    (4, 1, 2, "u4@x", 0, None),
    (5, 1, 3, "u5@x", 20, None),  # no team (1, 3)
    (6, 2, 2, "u6@x", 15, None),  # no team (2, 2)
    (7, 2, 1, "u7@x", None, None),
    (8, 2, 1, "a@x", 40, None),
    (9, 1, 1, "u9@x", -5, None),
    (10, 1, 2, "A@X", 50, None),
    (11, 2, 1, None, 70, None),
    (12, 1, 1, "u12@x", 0, None),
]
COLUMNS = """id INTEGER PRIMARY KEY,
    company_id INTEGER NOT NULL REFERENCES companies (id),
    team_id INTEGER,
    author_email TEXT,
    time_spent_seconds INTEGER,
    comment TEXT"""


def worklogs(extra: str = "", columns: str = COLUMNS, tail: str = "") -> str:
    """A new definition of worklogs: the old columns (or `columns`) plus `extra` definitions."""
    return f"CREATE TABLE worklogs (\n    {columns}{',' if extra else ''}\n    {extra}\n){tail}"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "live.db"
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE companies (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        con.execute(
            "CREATE TABLE teams (company_id INTEGER NOT NULL, id INTEGER NOT NULL, code TEXT, "
            "PRIMARY KEY (company_id, id)) WITHOUT ROWID"
        )
        con.execute(OLD_WORKLOGS)
        con.executemany("INSERT INTO companies VALUES (?, ?)", [(1, "one"), (2, "two")])
        con.executemany("INSERT INTO teams VALUES (?, ?, ?)", [(1, 1, "abc"), (1, 2, None), (2, 1, "it's")])
        con.executemany("INSERT INTO worklogs VALUES (?, ?, ?, ?, ?, ?)", WORKLOGS)
    con.close()
    return path


@pytest.fixture
def con(db: Path) -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(db)
    yield connection
    connection.close()


def summary(found: list[Violation]) -> list[tuple[str, int, tuple[str, ...]]]:
    return [(v.constraint.text, v.count, v.first_keys) for v in found]


def rowids(*ids: int) -> tuple[str, ...]:
    return tuple(f"rowid {i}" for i in ids)


# -- parsing -----------------------------------------------------------------------------------


def test_column_and_table_level_constraints_in_order() -> None:
    sql = """CREATE TABLE worklogs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        company_id INTEGER CONSTRAINT company_required NOT NULL REFERENCES companies(id) ON DELETE CASCADE,
        team_id INTEGER,
        author_email TEXT UNIQUE ON CONFLICT ABORT,
        time_spent_seconds INTEGER CHECK (time_spent_seconds > 0),
        CONSTRAINT positive_time CHECK ( time_spent_seconds   <  86400 ),
        UNIQUE (company_id, author_email),
        CONSTRAINT team_fk FOREIGN KEY (company_id, team_id) REFERENCES teams (company_id, id)
            ON DELETE SET NULL ON UPDATE NO ACTION DEFERRABLE INITIALLY DEFERRED
    )"""
    assert table_constraints(sql) == [
        Constraint("PRIMARY KEY", None, ("id",), "PRIMARY KEY (id)"),
        Constraint("NOT NULL", "company_required", ("company_id",), "company_id NOT NULL"),
        Constraint(
            "FOREIGN KEY", None, ("company_id",), "FOREIGN KEY (company_id) REFERENCES companies(id)",
            ref_table="companies", ref_columns=("id",),
        ),
        Constraint("UNIQUE", None, ("author_email",), "UNIQUE (author_email)"),
        Constraint(
            "CHECK", None, (), "CHECK (time_spent_seconds > 0)", expr="time_spent_seconds > 0"
        ),
        Constraint(
            "CHECK", "positive_time", (), "CHECK ( time_spent_seconds < 86400 )",
            expr="time_spent_seconds < 86400",
        ),
        Constraint("UNIQUE", None, ("company_id", "author_email"), "UNIQUE (company_id, author_email)"),
        Constraint(
            "FOREIGN KEY", "team_fk", ("company_id", "team_id"),
            "FOREIGN KEY (company_id, team_id) REFERENCES teams (company_id, id)",
            ref_table="teams", ref_columns=("company_id", "id"),
        ),
    ]  # fmt: skip


def test_quoted_names_comments_and_literals_with_commas_and_parens() -> None:
    sql = '''CREATE TABLE "my ""odd"" table" ( -- a comment, with (a paren
        "my col" TEXT DEFAULT 'a, (b' NOT NULL,  /* another, ( comment */
        `back tick` TEXT CHECK (`back tick` <> ')' AND `back tick` <> 'it''s, ('),
        [square one] INT DEFAULT (-1) REFERENCES "parent table" ON DELETE SET DEFAULT NOT NULL,
        plain INT DEFAULT -1 COLLATE NOCASE CONSTRAINT "u ""q""" UNIQUE,
        PRIMARY KEY ("my col" COLLATE NOCASE DESC, [square one])
    )'''
    assert table_constraints(sql) == [
        Constraint("NOT NULL", None, ("my col",), '"my col" NOT NULL'),
        Constraint(
            "CHECK", None, (), "CHECK (`back tick` <> ')' AND `back tick` <> 'it''s, (')",
            expr="`back tick` <> ')' AND `back tick` <> 'it''s, ('",
        ),
        Constraint(
            "FOREIGN KEY", None, ("square one",), 'FOREIGN KEY ([square one]) REFERENCES "parent table"',
            ref_table="parent table",
        ),
        Constraint("NOT NULL", None, ("square one",), "[square one] NOT NULL"),
        Constraint("UNIQUE", 'u "q"', ("plain",), "UNIQUE (plain)"),
        Constraint(
            "PRIMARY KEY", None, ("my col", "square one"),
            'PRIMARY KEY ("my col" COLLATE NOCASE DESC, [square one])',
        ),
    ]  # fmt: skip


def test_multi_word_types_without_rowid_strict_and_generated_columns() -> None:
    sql = """CREATE TEMP TABLE IF NOT EXISTS main.t (
        a DOUBLE PRECISION NOT NULL,
        b VARCHAR(20) CONSTRAINT short CHECK(length(b)<=20),
        c DECIMAL(10, 2) PRIMARY KEY,
        d INT GENERATED ALWAYS AS (a * 2) STORED NOT NULL,
        e AS (b || 'x') VIRTUAL UNIQUE
    ) WITHOUT ROWID, STRICT"""
    assert [(c.kind, c.name, c.columns, c.text, c.expr) for c in table_constraints(sql)] == [
        ("NOT NULL", None, ("a",), "a NOT NULL", None),
        ("CHECK", "short", (), "CHECK(length(b)<=20)", "length(b)<=20"),
        ("PRIMARY KEY", None, ("c",), "PRIMARY KEY (c)", None),
        ("NOT NULL", None, ("d",), "d NOT NULL", None),
        ("UNIQUE", None, ("e",), "UNIQUE (e)", None),
    ]


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE INDEX i ON t (a)",
        "CREATE TABLE t AS SELECT 1",
        "SELECT 1",
        "",
        "CREATE TABLE t (a TEXT DEFAULT 'unterminated)",
        "CREATE TABLE t (a INT",
    ],
)
def test_not_a_create_table_is_bad_input(sql: str) -> None:
    with pytest.raises(BadInput):
        table_constraints(sql)


def test_describe_names_the_constraint_only_when_named() -> None:
    plain = Constraint("CHECK", None, (), "CHECK (x > 0)", expr="x > 0")
    named = Constraint("CHECK", "positive_time", (), "CHECK (x > 0)", expr="x > 0")
    assert plain.describe() == "CHECK (x > 0)"
    assert named.describe() == 'constraint "positive_time" CHECK (x > 0)'
    assert Violation(named, 7, rowids(1, 2)).message() == (
        'constraint "positive_time" CHECK (x > 0): 7 row(s), first: rowid 1, rowid 2'
    )


def test_new_constraints_ignores_case_whitespace_comments_names_and_level() -> None:
    old = """CREATE TABLE t (a INT NOT NULL, b TEXT UNIQUE, c INT, CHECK (c > 0),
             FOREIGN KEY (c) REFERENCES p (id))"""
    new = """create table T (
        A int not null,                       -- same NOT NULL, other case
        b TEXT,
        "C" INT CONSTRAINT now_named CHECK(C>0) REFERENCES P(ID),
        unique ( B ),                        /* column-level before, table-level now */
        CHECK (c > 1),
        CHECK (c < 'X'),
        UNIQUE (a, b)
    )"""
    assert [c.text for c in new_constraints(old, new)] == [
        "CHECK (c > 1)",
        "CHECK (c < 'X')",
        "UNIQUE (a, b)",
    ]
    # string literals stay case-sensitive
    assert [c.text for c in new_constraints(new, new.replace("'X'", "'x'"))] == ["CHECK (c < 'x')"]
    assert new_constraints(new, new) == []


# -- find_violations ---------------------------------------------------------------------------


def test_check_counts_rows_and_renders_rowids(con: sqlite3.Connection) -> None:
    new = worklogs("CONSTRAINT positive_time CHECK (time_spent_seconds > 0)")
    [found] = find_violations(con, "worklogs", new)
    assert (found.count, found.first_keys) == (3, rowids(4, 9, 12))  # NULL (rowid 7) passes
    assert found.message() == (
        'constraint "positive_time" CHECK (time_spent_seconds > 0): '
        "3 row(s), first: rowid 4, rowid 9, rowid 12"
    )


def test_expression_makes_the_check_pass(con: sqlite3.Connection) -> None:
    new = worklogs("CHECK (time_spent_seconds > 0)")
    fix = {"time_spent_seconds": "max(time_spent_seconds, 1)"}
    assert find_violations(con, "worklogs", new, fix) == []
    half_fix = {"TIME_SPENT_SECONDS": "max(time_spent_seconds, -10)"}  # names match case-insensitively
    assert summary(find_violations(con, "worklogs", new, half_fix)) == [
        ("CHECK (time_spent_seconds > 0)", 3, rowids(4, 9, 12))
    ]


def test_not_null(con: sqlite3.Connection) -> None:
    new = worklogs(columns=COLUMNS.replace("author_email TEXT", "author_email TEXT NOT NULL"))
    assert summary(find_violations(con, "worklogs", new)) == [("author_email NOT NULL", 2, rowids(2, 11))]


def test_unique_nulls_are_distinct_and_collation_counts(con: sqlite3.Connection) -> None:
    new = worklogs("UNIQUE (author_email)")
    assert summary(find_violations(con, "worklogs", new)) == [("UNIQUE (author_email)", 2, rowids(3, 8))]
    nocase = worklogs(columns=COLUMNS.replace("author_email TEXT", "author_email TEXT COLLATE NOCASE UNIQUE"))
    assert summary(find_violations(con, "worklogs", nocase)) == [
        ("UNIQUE (author_email)", 3, rowids(3, 8, 10))
    ]


def test_composite_unique(con: sqlite3.Connection) -> None:
    new = worklogs("UNIQUE (company_id, time_spent_seconds)")  # (1, 0) twice; (2, NULL) is distinct
    assert summary(find_violations(con, "worklogs", new)) == [
        ("UNIQUE (company_id, time_spent_seconds)", 2, rowids(4, 12))
    ]


def test_primary_key_allows_null_on_rowid_tables_only(con: sqlite3.Connection) -> None:
    columns = COLUMNS.replace("id INTEGER PRIMARY KEY,", "id INTEGER NOT NULL,", 1)
    rowid_table = worklogs("PRIMARY KEY (author_email)", columns=columns)
    assert summary(find_violations(con, "worklogs", rowid_table)) == [
        ("PRIMARY KEY (author_email)", 2, rowids(3, 8))
    ]
    without_rowid = worklogs("PRIMARY KEY (author_email)", columns=columns, tail=" WITHOUT ROWID")
    assert summary(find_violations(con, "worklogs", without_rowid)) == [
        ("PRIMARY KEY (author_email)", 4, rowids(2, 3, 8, 11))
    ]


def test_composite_foreign_key_with_and_without_parent_columns(con: sqlite3.Connection) -> None:
    explicit = worklogs("FOREIGN KEY (company_id, team_id) REFERENCES teams (company_id, id)")
    implicit = worklogs("FOREIGN KEY (company_id, team_id) REFERENCES teams")  # the parent's primary key
    for new in (explicit, implicit):
        [found] = find_violations(con, "worklogs", new)
        assert (found.count, found.first_keys) == (2, rowids(5, 6))  # rowid 1 has a NULL team: passes


def test_foreign_key_to_a_missing_parent_flags_every_row_with_a_key(con: sqlite3.Connection) -> None:
    new = worklogs(columns=COLUMNS.replace("team_id INTEGER", "team_id INTEGER REFERENCES nowhere (id)"))
    assert summary(find_violations(con, "worklogs", new, limit=3)) == [
        ("FOREIGN KEY (team_id) REFERENCES nowhere (id)", 11, rowids(2, 3, 4))
    ]


def test_foreign_key_without_a_parent_key_is_bad_input(con: sqlite3.Connection) -> None:
    con.execute("CREATE TABLE nokey (x INT)")
    new = worklogs(columns=COLUMNS.replace("team_id INTEGER", "team_id INTEGER REFERENCES nokey"))
    with pytest.raises(BadInput, match=r"1 column\(s\) refer to 0 parent key column\(s\)"):
        find_violations(con, "worklogs", new)


def test_self_reference_points_at_the_new_rows(con: sqlite3.Connection) -> None:
    new = worklogs("parent_id INTEGER REFERENCES worklogs (id)")
    # New ids are 101..112; parents 100..111: only the first row's parent is missing. Checked
    # against the live ids (1..12), eleven rows would be orphans.
    shifted = {"id": "id + 100", "parent_id": "id + 99"}
    assert summary(find_violations(con, "worklogs", new, shifted)) == [
        ("FOREIGN KEY (parent_id) REFERENCES worklogs (id)", 1, rowids(1))
    ]
    implicit = worklogs("parent_id INTEGER REFERENCES worklogs")
    assert [v.count for v in find_violations(con, "worklogs", implicit, {"parent_id": "id + 1"})] == [1]


def test_new_column_takes_its_default(con: sqlite3.Connection) -> None:
    new = worklogs("priority INTEGER NOT NULL DEFAULT (1 + 1) CHECK (priority BETWEEN 1 AND 5)")
    assert find_violations(con, "worklogs", new) == []
    bad_default = worklogs("priority INTEGER NOT NULL DEFAULT 0 CHECK (priority BETWEEN 1 AND 5)")
    assert summary(find_violations(con, "worklogs", bad_default, limit=2)) == [
        ("CHECK (priority BETWEEN 1 AND 5)", 12, rowids(1, 2))
    ]
    no_default = worklogs("owner TEXT NOT NULL")
    assert summary(find_violations(con, "worklogs", no_default)) == [
        ("owner NOT NULL", 12, rowids(1, 2, 3, 4, 5))
    ]


def test_dropped_column_feeds_an_expression_but_is_not_in_scope(con: sqlite3.Connection) -> None:
    columns = COLUMNS.replace(
        "time_spent_seconds INTEGER,\n    comment TEXT", "minutes INTEGER CHECK (minutes >= 1)"
    )
    new = worklogs(columns=columns)
    assert summary(find_violations(con, "worklogs", new, {"minutes": "time_spent_seconds / 60"})) == [
        ("CHECK (minutes >= 1)", 9, rowids(2, 3, 4, 5, 6))
    ]
    gone = worklogs("CHECK (comment IS NOT NULL)", columns=columns)
    with pytest.raises(BadInput, match=r"does not compile.*no such column: comment"):
        find_violations(con, "worklogs", gone)


def test_generated_column_constraints(con: sqlite3.Connection) -> None:
    new = worklogs("total INTEGER GENERATED ALWAYS AS (time_spent_seconds + 100) STORED CHECK (total > 100)")
    assert summary(find_violations(con, "worklogs", new)) == [("CHECK (total > 100)", 3, rowids(4, 9, 12))]
    with pytest.raises(BadInput, match="unknown column"):
        find_violations(con, "worklogs", new, {"total": "1"})


def test_without_rowid_keys_are_the_primary_key(con: sqlite3.Connection) -> None:
    new = """CREATE TABLE teams (company_id INTEGER NOT NULL, id INTEGER NOT NULL,
        code TEXT NOT NULL CHECK (length(code) = 3), PRIMARY KEY (company_id, id)) WITHOUT ROWID"""
    assert summary(find_violations(con, "teams", new)) == [
        ("code NOT NULL", 1, ("(company_id, id) = (1, 2)",)),
        ("CHECK (length(code) = 3)", 1, ("(company_id, id) = (2, 1)",)),
    ]
    con.execute("CREATE TABLE tags (name TEXT PRIMARY KEY, n INT) WITHOUT ROWID")
    con.executemany("INSERT INTO tags VALUES (?, ?)", [("it's", -1), ("b", 2), (" ", -3)])
    tags = "CREATE TABLE tags (name TEXT PRIMARY KEY, n INT CHECK (n > 0)) WITHOUT ROWID"
    assert summary(find_violations(con, "tags", tags)) == [
        ("CHECK (n > 0)", 2, ("name = ' '", "name = 'it''s'"))
    ]


def test_quoted_table_and_column_names(con: sqlite3.Connection) -> None:
    con.execute('CREATE TABLE "my table" ("my col" TEXT, "a ""q"" b" INT)')
    con.executemany('INSERT INTO "my table" VALUES (?, ?)', [("x", 1), (None, 2), ("y", -1)])
    new = 'CREATE TABLE "my table" ("my col" TEXT NOT NULL, "a ""q"" b" INT CHECK ("a ""q"" b" > 0))'
    assert summary(find_violations(con, "my table", new)) == [
        ('"my col" NOT NULL', 1, rowids(2)),
        ('CHECK ("a ""q"" b" > 0)', 1, rowids(3)),
    ]


def test_only_new_skips_old_constraints_unless_their_columns_change(con: sqlite3.Connection) -> None:
    con.execute("CREATE TABLE t (x INT CHECK (x > 0), y INT)")
    con.execute("PRAGMA ignore_check_constraints = ON")
    con.executemany("INSERT INTO t VALUES (?, ?)", [(1, 1), (-1, 2)])  # already breaks the old CHECK
    con.execute("PRAGMA ignore_check_constraints = OFF")
    con.commit()
    same = "create table T (X int check(X>0), y INT)"
    assert find_violations(con, "t", same) == []
    assert summary(find_violations(con, "t", same, only_new=False)) == [("check(X>0)", 1, rowids(2))]
    assert summary(find_violations(con, "t", same, {"x": "x - 1"})) == [("check(X>0)", 2, rowids(1, 2))]
    assert find_violations(con, "t", same, {"y": "y * 2"}) == []  # y changes, the CHECK is on x


def test_limit_caps_the_keys_but_not_the_count(con: sqlite3.Connection) -> None:
    new = worklogs("CHECK (time_spent_seconds > 1000)")
    assert summary(find_violations(con, "worklogs", new, limit=2)) == [
        ("CHECK (time_spent_seconds > 1000)", 11, rowids(1, 2))
    ]
    assert summary(find_violations(con, "worklogs", new, limit=0)) == [
        ("CHECK (time_spent_seconds > 1000)", 11, ())
    ]


@pytest.mark.parametrize(
    ("table", "new_sql", "expressions", "message"),
    [
        ("worklogs", "CREATE INDEX i ON worklogs (id)", None, "Not a CREATE TABLE statement"),
        ("worklogs", worklogs().replace("worklogs", "other"), None, "creates table 'other'"),
        ("missing", worklogs(), None, "Table 'missing' does not exist"),
        ("worklogs", worklogs("x INT CHECK (nope > 0)"), None, "does not compile: no such column: nope"),
        (
            "worklogs",
            worklogs(),
            {"comment": "upper(nope)"},
            "expression for new column 'comment' of worklogs does not compile: no such column: nope",
        ),
        ("worklogs", worklogs(), {"ghost": "1"}, "unknown column.*ghost"),
    ],
)
def test_bad_input(
    con: sqlite3.Connection, table: str, new_sql: str, expressions: dict[str, str] | None, message: str
) -> None:
    with pytest.raises(BadInput, match=message):
        find_violations(con, table, new_sql, expressions)


def test_find_violations_writes_nothing(db: Path) -> None:
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    con = sqlite3.connect(db)
    try:
        new = worklogs(
            "priority INT NOT NULL DEFAULT 0 CHECK (priority > 0), parent_id INT REFERENCES worklogs, "
            "UNIQUE (author_email), FOREIGN KEY (company_id, team_id) REFERENCES teams",
            columns=COLUMNS.replace("comment TEXT", "comment TEXT NOT NULL"),
        )
        found = find_violations(con, "worklogs", new, {"parent_id": "id - 1"}, only_new=False)
        assert [(v.constraint.kind, v.count) for v in found] == [
            ("NOT NULL", 10),
            ("CHECK", 12),
            ("FOREIGN KEY", 1),
            ("UNIQUE", 2),
            ("FOREIGN KEY", 2),
        ]
        assert (con.in_transaction, con.total_changes) == (False, 0)
    finally:
        con.close()
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in db.parent.iterdir()) == ["live.db"]


def test_without_foreign_keys_keeps_everything_else() -> None:
    from liteshift.rebuild.constraints import without_foreign_keys

    sql = (
        'CREATE TABLE "a b" (id INTEGER PRIMARY KEY, '
        "p INTEGER NOT NULL REFERENCES par(id) ON DELETE CASCADE, q REFERENCES x, "
        "r TEXT CONSTRAINT fk1 REFERENCES y(z) ON UPDATE SET NULL NOT NULL DEFAULT 'a,b', "
        "CONSTRAINT c2 FOREIGN KEY (p, q) REFERENCES par(a, b) DEFERRABLE INITIALLY DEFERRED, "
        "FOREIGN KEY (r) REFERENCES y(z), CHECK (p > 0)) WITHOUT ROWID, STRICT"
    )
    assert without_foreign_keys(sql) == (
        'CREATE TABLE "a b" (id INTEGER PRIMARY KEY, p INTEGER NOT NULL, q, '
        "r TEXT NOT NULL DEFAULT 'a,b', CHECK (p > 0)) WITHOUT ROWID, STRICT"
    )
    assert [c.kind for c in table_constraints(without_foreign_keys(sql))] == [
        "PRIMARY KEY",
        "NOT NULL",
        "NOT NULL",
        "CHECK",
    ]
