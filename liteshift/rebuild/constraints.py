"""The constraints of a table's new definition, and the live rows that would break them.

Before a rebuild (create the new table, copy the rows, swap) writes anything, each constraint of
the new definition runs as one read-only SELECT over the live rows, with the new columns computed
as the rebuild would compute them. Nothing here writes to the database.
"""

from __future__ import annotations

import re
import sqlite3
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from liteshift.core.errors import BadInput
from liteshift.core.sql import quote_ident

Kind = Literal["NOT NULL", "CHECK", "UNIQUE", "PRIMARY KEY", "FOREIGN KEY"]

_TOKEN_RE = re.compile(
    r"""(?P<ws>\s+|--[^\n]*|/\*.*?(?:\*/|\Z))
    |(?P<str>[xX]?'(?:[^']|'')*')
    |(?P<id>"(?:[^"]|"")*"|`(?:[^`]|``)*`|\[[^\]]*\])
    |(?P<num>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    |(?P<word>[^\W\d][\w$]*)
    |(?P<op>->>|->|<=|>=|<>|!=|==|\|\||<<|>>|.)""",
    re.VERBOSE | re.DOTALL,
)
# Words that end a column's type name and start its constraints.
_COLUMN_STOP = {"CONSTRAINT", "PRIMARY", "NOT", "NULL", "UNIQUE", "CHECK", "DEFAULT", "COLLATE"}
_COLUMN_STOP |= {"REFERENCES", "GENERATED", "AS"}


@dataclass(frozen=True)
class Constraint:
    """One NOT NULL, CHECK, UNIQUE, PRIMARY KEY or FOREIGN KEY of a CREATE TABLE statement."""

    kind: Kind
    name: str | None  # the CONSTRAINT name when given
    columns: tuple[str, ...]  # the columns involved; () for CHECK
    text: str  # as written (column-level ones in their table-level form), whitespace-normalised
    ref_table: str | None = None  # FOREIGN KEY only
    ref_columns: tuple[str, ...] = ()  # FOREIGN KEY only; () = the parent's primary key
    expr: str | None = None  # CHECK only: the expression inside the parentheses

    def describe(self) -> str:
        return f"constraint {quote_ident(self.name)} {self.text}" if self.name else self.text


@dataclass(frozen=True)
class Violation:
    """The live rows that would break one constraint: how many, and the keys of the first few."""

    constraint: Constraint
    count: int
    first_keys: tuple[str, ...]  # "rowid 17" or "(company_id, id) = (3, 9)"; never other row data

    def message(self) -> str:
        return f"{self.constraint.describe()}: {self.count} row(s), first: {', '.join(self.first_keys)}"


class _Tok(NamedTuple):
    kind: str  # str, id (quoted identifier), num, word, op
    text: str
    space: bool  # whitespace or a comment came before it

    @property
    def up(self) -> str:
        return self.text.upper() if self.kind == "word" else ""

    @property
    def name(self) -> str:
        """The identifier this token spells, unquoted."""
        if self.kind == "id" or (self.kind == "str" and self.text[0] == "'"):
            q, inner = self.text[0], self.text[1:-1]
            return inner if q == "[" else inner.replace(q * 2, q)
        return self.text

    @property
    def key(self) -> str:
        return self.name.lower() if self.kind in ("word", "id") else self.text


@dataclass
class _Column:
    name: str
    written: str  # the name as written, quotes included
    collate: str | None = None
    generated: str | None = None  # the expression of a generated column


@dataclass
class _Table:
    name: str
    without_rowid: bool
    columns: list[_Column] = field(default_factory=list)
    constraints: list[Constraint] = field(default_factory=list)


def _tokenize(sql: str) -> list[_Tok]:
    toks: list[_Tok] = []
    space = False
    for m in _TOKEN_RE.finditer(sql):
        kind = m.lastgroup or "op"
        if kind == "ws":
            space = True
            continue
        if m.group() in ("'", '"', "`", "["):
            raise BadInput(
                "Unterminated quote in SQL", f"no closing {m.group()} in: {sql[:80]!r}", "close the quote"
            )
        toks.append(_Tok(kind, m.group(), space))
        space = False
    return toks


def _text(toks: list[_Tok]) -> str:
    return "".join((" " if t.space and i else "") + t.text for i, t in enumerate(toks))


def _close(toks: list[_Tok], i: int) -> int:
    """The index of the ')' matching the '(' at toks[i]."""
    if toks[i].text != "(":
        raise IndexError(i)
    depth = 0
    for j in range(i, len(toks)):
        depth += {"(": 1, ")": -1}.get(toks[j].text, 0)
        if depth == 0:
            return j
    raise IndexError(i)


def _split(toks: list[_Tok]) -> list[list[_Tok]]:
    """Split at top-level commas."""
    items: list[list[_Tok]] = [[]]
    depth = 0
    for t in toks:
        depth += {"(": 1, ")": -1}.get(t.text, 0)
        if t.text == "," and depth == 0:
            items.append([])
        else:
            items[-1].append(t)
    return items


def _names(toks: list[_Tok], i: int) -> tuple[tuple[str, ...], int]:
    """The column names in the parenthesised list at toks[i], and the index of its ')'."""
    end = _close(toks, i)
    return tuple(item[0].name for item in _split(toks[i + 1 : end])), end


def _references(toks: list[_Tok], i: int) -> tuple[str, tuple[str, ...], int]:
    """REFERENCES at toks[i]: the parent table, its columns, and the index of the clause's last token."""
    ref, end = toks[i + 1].name, i + 1
    cols: tuple[str, ...] = ()
    if end + 1 < len(toks) and toks[end + 1].text == "(":
        cols, end = _names(toks, end + 1)
    return ref, cols, end


def _column(item: list[_Tok], table: _Table) -> None:
    col = _Column(item[0].name, item[0].text)
    table.columns.append(col)
    i, pending = 1, None
    while i < len(item) and item[i].up not in _COLUMN_STOP:  # the type name
        i = _close(item, i) + 1 if item[i].text == "(" else i + 1
    while i < len(item):
        word, name, pending = item[i].up, pending, None
        cols = (col.name,)
        if word == "CONSTRAINT":
            pending, i = item[i + 1].name, i + 2
        elif word == "PRIMARY":
            table.constraints.append(Constraint("PRIMARY KEY", name, cols, f"PRIMARY KEY ({col.written})"))
            i += 2
        elif word == "NOT" and item[i + 1].up == "NULL":
            table.constraints.append(Constraint("NOT NULL", name, cols, f"{col.written} NOT NULL"))
            i += 2
        elif word == "UNIQUE":
            table.constraints.append(Constraint("UNIQUE", name, cols, f"UNIQUE ({col.written})"))
            i += 1
        elif word == "CHECK":
            end = _close(item, i + 1)
            expr = _text(item[i + 2 : end])
            table.constraints.append(Constraint("CHECK", name, (), _text(item[i : end + 1]), expr=expr))
            i = end + 1
        elif word == "REFERENCES":
            ref, ref_cols, end = _references(item, i)
            text = f"FOREIGN KEY ({col.written}) {_text(item[i : end + 1])}"
            table.constraints.append(Constraint("FOREIGN KEY", name, cols, text, ref, ref_cols))
            i = end + 1
        elif word == "DEFAULT":
            i += 3 if item[i + 1].text in ("+", "-") else 2
            if item[i - 1].text == "(":
                i = _close(item, i - 1) + 1
        elif word == "COLLATE":
            col.collate, i = item[i + 1].text, i + 2
        elif word == "AS":
            end = _close(item, i + 1)
            col.generated, i = _text(item[i + 2 : end]), end + 1
        elif word == "ON":  # ON CONFLICT x, ON DELETE|UPDATE SET NULL|SET DEFAULT|NO ACTION|CASCADE...
            i += 4 if item[i + 2].up in ("SET", "NO") else 3
        elif word == "MATCH":
            i += 2
        else:  # NULL, ASC, DESC, AUTOINCREMENT, GENERATED ALWAYS, STORED, DEFERRABLE...
            i = _close(item, i) + 1 if item[i].text == "(" else i + 1


def _table_constraint(item: list[_Tok], table: _Table) -> None:
    name, i = (item[1].name, 2) if item[0].up == "CONSTRAINT" else (None, 0)
    word = item[i].up
    if word in ("PRIMARY", "UNIQUE"):
        cols, end = _names(item, i + 2 if word == "PRIMARY" else i + 1)
        kind: Kind = "PRIMARY KEY" if word == "PRIMARY" else "UNIQUE"
        table.constraints.append(Constraint(kind, name, cols, _text(item[i : end + 1])))
    elif word == "CHECK":
        end = _close(item, i + 1)
        expr = _text(item[i + 2 : end])
        table.constraints.append(Constraint("CHECK", name, (), _text(item[i : end + 1]), expr=expr))
    elif word == "FOREIGN":
        cols, end = _names(item, i + 2)
        ref, ref_cols, end = _references(item, end + 1)
        text = _text(item[i : end + 1])
        table.constraints.append(Constraint("FOREIGN KEY", name, cols, text, ref, ref_cols))


def _parse(create_sql: str) -> _Table:
    toks = _tokenize(create_sql)
    try:
        i = 2 if [t.up for t in toks[:2]] in (["CREATE", "TEMP"], ["CREATE", "TEMPORARY"]) else 1
        if toks[0].up != "CREATE" or toks[i].up != "TABLE":
            raise IndexError(i)
        i += 4 if [t.up for t in toks[i + 1 : i + 4]] == ["IF", "NOT", "EXISTS"] else 1
        i += 2 if toks[i + 1].text == "." else 0  # schema.name
        end = _close(toks, i + 1)
        table = _Table(toks[i].name, "ROWID" in {t.up for t in toks[end + 1 :]})  # WITHOUT ROWID
        for item in _split(toks[i + 2 : end]):
            if item[0].up in ("CONSTRAINT", "PRIMARY", "UNIQUE", "CHECK", "FOREIGN"):
                _table_constraint(item, table)
            else:
                _column(item, table)
    except IndexError:
        raise BadInput(
            "Not a CREATE TABLE statement",
            f"expected CREATE TABLE <name> (<columns>...), got: {' '.join(create_sql.split())[:80]!r}",
            "declare the table's new definition as one CREATE TABLE statement with a column list",
        ) from None
    return table


_FK_TAIL = {"ON", "MATCH", "NOT", "DEFERRABLE", "INITIALLY"}


def _skip_references(item: list[_Tok], i: int) -> int:
    """The index after a REFERENCES clause at item[i], with its actions and deferral."""
    end = _references(item, i)[2] + 1
    while end < len(item) and item[end].up in _FK_TAIL:
        word = item[end].up
        if word == "ON":
            end += 4 if item[end + 2].up in ("SET", "NO") else 3
        elif word == "NOT" and end + 1 < len(item) and item[end + 1].up == "DEFERRABLE":
            end += 2
        elif word == "NOT":  # NOT NULL: a constraint of its own
            break
        else:  # MATCH x, DEFERRABLE, INITIALLY DEFERRED|IMMEDIATE
            end += 1 if word == "DEFERRABLE" else 2
    return end


def without_foreign_keys(create_sql: str) -> str:
    """The CREATE TABLE statement with every FOREIGN KEY / REFERENCES clause removed.

    Storage does not depend on foreign keys: an online rebuild's shadow table is created this way,
    so the application's parent deletes are not checked against rows the migration has not
    committed yet, and gets its full text back at the cut-over.
    """
    toks = _tokenize(create_sql)
    table = _parse(create_sql)  # refuses what is not a CREATE TABLE
    del table
    start = next(i for i, t in enumerate(toks) if t.text == "(")
    end = _close(toks, start)
    kept: list[list[_Tok]] = []
    for item in _split(toks[start + 1 : end]):
        first = item[2].up if item[0].up == "CONSTRAINT" and len(item) > 2 else item[0].up
        if first == "FOREIGN":
            continue
        out: list[_Tok] = []
        i = 0
        while i < len(item):
            if item[i].up == "CONSTRAINT" and i + 2 < len(item) and item[i + 2].up == "REFERENCES":
                i = _skip_references(item, i + 2)
            elif item[i].up == "REFERENCES":
                i = _skip_references(item, i)
            else:
                out.append(item[i])
                i += 1
        kept.append(out)
    body = ", ".join(_text(item) for item in kept)
    return f"{_text(toks[: start + 1])}{body}{_text(toks[end:])}"


def table_constraints(create_sql: str) -> list[Constraint]:
    """Every NOT NULL, CHECK, UNIQUE, PRIMARY KEY and FOREIGN KEY of a CREATE TABLE statement,
    column- and table-level, in the order written."""
    return _parse(create_sql).constraints


def _key(c: Constraint) -> tuple[object, ...]:
    return (c.kind, tuple(x.lower() for x in c.columns), tuple(t.key for t in _tokenize(c.text)))


def new_constraints(old_sql: str, new_sql: str) -> list[Constraint]:
    """Constraints of new_sql that old_sql does not have (compared by kind, columns and text,
    ignoring whitespace, comments, the constraint's name and the case of keywords/identifiers)."""
    old = {_key(c) for c in table_constraints(old_sql)}
    return [c for c in table_constraints(new_sql) if _key(c) not in old]


def _mentions(c: Constraint) -> set[str]:
    names = {t.name.lower() for t in _tokenize(c.expr or "") if t.kind in ("word", "id")}
    return names | {x.lower() for x in c.columns}


def _literal(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return f"X'{value.hex()}'"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(value)


def _render_key(names: list[str], values: tuple[object, ...]) -> str:
    if not names:
        return f"rowid {values[0]}"
    if len(names) == 1:
        return f"{names[0]} = {_literal(values[0])}"
    return f"({', '.join(names)}) = ({', '.join(map(_literal, values))})"


def _fresh(base: str, taken: set[str]) -> str:
    while base.lower() in taken:
        base += "_"
    return base


@dataclass
class _RowSet:
    """The SELECT that computes the new rows from the live ones, keyed by the live rows' keys."""

    body: str
    keys: list[str]  # the key aliases, quoted
    key_names: list[str]  # the live primary key columns; [] = rowid
    changed: set[str]  # new columns whose values are not the old column's


def find_violations(
    con: sqlite3.Connection,
    table: str,
    new_sql: str,
    expressions: dict[str, str] | None = None,
    only_new: bool = True,
    limit: int = 5,
) -> list[Violation]:
    """Run each constraint of new_sql as a read-only query over the live rows of `table`, with the
    new columns computed as the rebuild would compute them; one Violation per broken constraint.

    With only_new, a constraint the old definition already has is skipped unless it involves a
    column whose value the rebuild changes (an expression, a new column, a generated column).
    """
    row = con.execute(
        "SELECT name, sql FROM sqlite_schema WHERE type = 'table' AND name = ? COLLATE NOCASE", (table,)
    ).fetchone()
    if row is None:
        raise BadInput(f"Table {table!r} does not exist", "there are no live rows to check", "check the name")
    table, old_sql = row
    old, new = _parse(old_sql), _parse(new_sql)
    if new.name.lower() != table.lower():
        raise BadInput(
            f"The new definition of {table} creates table {new.name!r}",
            "a rebuild declares the new definition under the table's own name",
            f"write CREATE TABLE {quote_ident(table)} (...)",
        )
    with closing(sqlite3.connect(":memory:")) as mem:
        try:
            mem.execute(new_sql)
        except sqlite3.Error as exc:
            raise BadInput(f"The new definition of {table} does not compile", str(exc), "fix it") from exc
        xinfo = mem.execute(f"PRAGMA table_xinfo({quote_ident(new.name)})").fetchall()
    rows = _row_set(con, table, old, new, xinfo, expressions or {})

    constraints = new.constraints
    if only_new:
        fresh = new_constraints(old_sql, new_sql)
        pk_now_required = new.without_rowid and not old.without_rowid  # PRIMARY KEY gains NOT NULL
        constraints = [
            c
            for c in constraints
            if c in fresh or _mentions(c) & rows.changed or (pk_now_required and c.kind == "PRIMARY KEY")
        ]
    new_pk = tuple(str(r[1]) for r in sorted(xinfo, key=lambda r: r[5]) if r[5])
    cte = quote_ident(_fresh("liteshift_new_rows", {(c.ref_table or "").lower() for c in constraints}))
    keys = ", ".join(rows.keys)
    found: list[Violation] = []
    for c in constraints:
        where = _condition(con, c, new, new_pk, cte)
        sql = (
            f"WITH {cte} AS ({rows.body}) SELECT {keys}, count(*) OVER () "
            f"FROM {cte} AS {quote_ident(new.name)} WHERE {where} ORDER BY {keys} LIMIT ?"
        )
        try:
            hits = con.execute(sql, (max(limit, 1),)).fetchall()
        except sqlite3.Error as exc:
            raise BadInput(f"Cannot check {c.describe()} on {table}", str(exc), "fix the constraint") from exc
        if hits:
            first = tuple(_render_key(rows.key_names, r[:-1]) for r in hits[:limit])
            found.append(Violation(c, hits[0][-1], first))
    return found


def _row_set(
    con: sqlite3.Connection,
    table: str,
    old: _Table,
    new: _Table,
    xinfo: list[tuple[Any, ...]],
    expressions: dict[str, str],
) -> _RowSet:
    """Each new column from its expression, the old column of its name, or its DEFAULT; the
    generated ones computed on top, one layer each, in the order declared."""
    q = quote_ident
    old_cols = {r[1].lower(): r[1] for r in con.execute(f"PRAGMA table_xinfo({q(table)})")}
    if old.without_rowid:
        info = con.execute(f"PRAGMA table_info({q(table)})").fetchall()
        key_names = [r[1] for r in sorted(info, key=lambda r: r[5]) if r[5]]
        key_exprs = [q(n) for n in key_names]
    else:
        key_names = []
        key_exprs = [next((a for a in ("rowid", "_rowid_", "oid") if a not in old_cols), "rowid")]
    taken = {r[1].lower() for r in xinfo}
    keys = [q(_fresh(f"_key{n}", taken)) for n in range(len(key_exprs))]
    values = [f"{e} AS {k}" for e, k in zip(key_exprs, keys, strict=True)]
    todo = {k.lower(): v for k, v in expressions.items()}
    parsed = {c.name.lower(): c for c in new.columns}
    generated: list[str] = []
    changed: set[str] = set()
    for _, name, _, _, default, _, hidden in xinfo:
        col, low = parsed[name.lower()], name.lower()
        collate = f" COLLATE {col.collate}" if col.collate else ""
        if hidden in (2, 3):
            generated.append(f"({col.generated}){collate} AS {q(name)}")
            changed.add(low)
            continue
        if low in todo:
            value = f"({todo.pop(low)})"
            try:
                con.execute(f"SELECT {value} FROM {q(table)} LIMIT 0")
            except sqlite3.Error as exc:
                raise BadInput(
                    f"The expression for new column {name!r} of {table} does not compile",
                    str(exc),
                    "write an SQL expression over the old row's columns",
                ) from exc
        elif low in old_cols:
            value = q(old_cols[low])
        else:
            value = "NULL" if default is None else f"({default})"
        if value != q(old_cols.get(low, "")):
            changed.add(low)
        values.append(f"{value}{collate} AS {q(name)}")
    if todo:
        raise BadInput(
            f"Expression for unknown column(s) {', '.join(k for k in expressions if k.lower() in todo)}",
            f"the new definition of {table} has no such (non-generated) column",
            "name only columns of the new definition",
        )
    body = f"SELECT {', '.join(values)} FROM {q(table)}"
    for g in generated:
        body = f"SELECT *, {g} FROM ({body}) AS {q(new.name)}"
    return _RowSet(body, keys, key_names, changed)


def _condition(con: sqlite3.Connection, c: Constraint, new: _Table, new_pk: tuple[str, ...], cte: str) -> str:
    """The WHERE clause that selects the new rows breaking constraint c."""
    q, t = quote_ident, quote_ident(new.name)
    cols = [f"{t}.{q(x)}" for x in c.columns]
    present = " AND ".join(f"{x} IS NOT NULL" for x in cols)
    if c.kind == "NOT NULL":
        return f"{cols[0]} IS NULL"
    if c.kind == "CHECK":
        return f"NOT ({c.expr})"
    if c.kind in ("UNIQUE", "PRIMARY KEY"):
        plain = ", ".join(q(x) for x in c.columns)
        dups = f"SELECT {plain} FROM {cte} GROUP BY {plain} HAVING count(*) > 1"
        dup = f"{present} AND ({', '.join(cols)}) IN ({dups})"
        if c.kind == "PRIMARY KEY" and new.without_rowid:
            return f"({' OR '.join(f'{x} IS NULL' for x in cols)}) OR ({dup})"
        return dup
    ref = c.ref_table or ""
    if ref.lower() == new.name.lower():  # a self-reference: the parent rows are the new rows
        parent, parent_pk = cte, new_pk
    else:
        parent, info = q(ref), con.execute(f"PRAGMA table_info({q(ref)})").fetchall()
        if not info:  # no parent table: every child row with a key is an orphan
            return present
        parent_pk = tuple(str(r[1]) for r in sorted(info, key=lambda r: r[5]) if r[5])
    ref_cols = c.ref_columns or parent_pk
    if len(ref_cols) != len(cols):
        raise BadInput(
            f"{c.describe()} does not match its parent table {ref}",
            f"{len(cols)} column(s) refer to {len(ref_cols)} parent key column(s)",
            "name the parent's key columns after REFERENCES",
        )
    match = " AND ".join(f"{q('__parent')}.{q(r)} = {x}" for r, x in zip(ref_cols, cols, strict=True))
    return f"{present} AND NOT EXISTS (SELECT 1 FROM {parent} AS {q('__parent')} WHERE {match})"
