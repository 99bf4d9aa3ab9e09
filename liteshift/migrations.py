"""Migration files: parsing, checksums, the tracking table, and rehearsal on a schema copy."""

from __future__ import annotations

import hashlib
import re
import sqlite3
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from liteshift.db import TRACKING_TABLE, quote_ident
from liteshift.errors import BadInput, ChecksumDrift

FILE_RE = re.compile(r"^(\d{3,})_([a-z0-9_]+)\.sql$")
UP_MARK = "-- migrate:up"
DOWN_MARK = "-- migrate:down"
# Statements the runner owns: a file that still says BEGIN/COMMIT keeps working.
TXN_RE = re.compile(
    r"^(BEGIN(\s+(DEFERRED|IMMEDIATE|EXCLUSIVE))?(\s+TRANSACTION)?|COMMIT(\s+TRANSACTION)?"
    r"|END(\s+TRANSACTION)?)$",
    re.IGNORECASE,
)
FORBIDDEN_RE = re.compile(r"^(VACUUM|ATTACH|DETACH|ROLLBACK|SAVEPOINT|RELEASE|PRAGMA)\b", re.I)
CREATE_INDEX_RE = re.compile(
    r"^CREATE\s+(UNIQUE\s+)?INDEX\s+(IF\s+NOT\s+EXISTS\s+)?"
    r"(?P<name>\"(?:[^\"]|\"\")+\"|`(?:[^`]|``)+`|\[[^\]]+\]|[\w$]+)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Query:
    """A query a migration exists to serve, from the sidecar TOML."""

    name: str
    sql: str
    expect_index: str | None = None


@dataclass(frozen=True)
class Migration:
    """One migration file: its up and down statements and what it claims to serve."""

    version: str
    name: str
    path: Path
    checksum: str
    up: tuple[str, ...]
    down: tuple[str, ...]
    queries: tuple[Query, ...] = field(default=())

    @property
    def label(self) -> str:
        return f"{self.version}_{self.name}"

    def created_index_names(self) -> list[str]:
        """Names of the indexes this migration's up creates, read from its statements."""
        names = []
        for stmt in self.up:
            m = CREATE_INDEX_RE.match(strip_comments(stmt))
            if m:
                names.append(unquote(m.group("name")))
        return names


def unquote(name: str) -> str:
    """Remove SQL identifier quotes."""
    if name[:1] in '"`[' and len(name) >= 2:
        inner = name[1:-1]
        return inner.replace(name[0] * 2, name[0]) if name[0] in '"`' else inner
    return name


def strip_comments(sql: str) -> str:
    """Drop -- and /* */ comments (outside string literals) and trim."""
    out, i, n = [], 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in "'\"":
            j = i + 1
            while j < n and not (sql[j] == ch and (j + 1 >= n or sql[j + 1] != ch)):
                j += 2 if sql[j] == ch else 1
            out.append(sql[i : j + 1])
            i = j + 1
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            i = n if j < 0 else j + 2
        else:
            out.append(ch)
            i += 1
    return "".join(out).strip()


def split_statements(sql: str, where: str) -> tuple[str, ...]:
    """Split SQL into complete statements, dropping the transaction lines the runner owns."""
    statements: list[str] = []
    buf = ""
    for piece in sql.splitlines(keepends=True):
        buf += piece
        if ";" in piece and sqlite3.complete_statement(buf):
            _keep(buf, statements, where)
            buf = ""
    if strip_comments(buf):
        raise BadInput(
            f"{where} ends with an incomplete statement",
            f"no closing ';' after: {strip_comments(buf)[:80]!r}",
            "end every statement with a semicolon",
        )
    return tuple(statements)


def _keep(buf: str, statements: list[str], where: str) -> None:
    body = strip_comments(buf).rstrip(";").strip()
    if not body:
        return
    if TXN_RE.match(" ".join(body.split())):
        return
    if FORBIDDEN_RE.match(body):
        raise BadInput(
            f"{where} contains {body.split()[0].upper()}",
            "liteshift runs each migration inside one transaction it owns",
            "remove that statement from the migration",
        )
    statements.append(body)


def failure_detail(exc: BaseException, stmt: str) -> str:
    """SQLite's error and the statement it came from, on one line."""
    return f"{exc} in: {' '.join(stmt.split())[:120]}"


def parse_migration(path: Path) -> Migration:
    """Read one NNN_slug.sql file and its optional NNN_slug.toml sidecar."""
    m = FILE_RE.match(path.name)
    if not m:
        raise BadInput(
            f"Migration file {path.name} is misnamed",
            "migration files are named NNN_slug.sql (digits, underscore, lowercase)",
            "rename it, for example 002_add_invoice_index.sql",
        )
    raw = path.read_bytes()
    text = raw.decode("utf-8")
    up_text, down_text = _sections(text, path)
    return Migration(
        version=m.group(1),
        name=m.group(2),
        path=path,
        checksum=hashlib.sha256(raw).hexdigest(),
        up=split_statements(up_text, f"{path.name} (up)"),
        down=split_statements(down_text, f"{path.name} (down)") if down_text else (),
        queries=_sidecar(path.with_suffix(".toml")),
    )


def _sections(text: str, path: Path) -> tuple[str, str]:
    if UP_MARK not in text:
        raise BadInput(
            f"Migration {path.name} has no '{UP_MARK}' section",
            "liteshift cannot tell which statements apply the migration",
            f"put '{UP_MARK}' above the statements and '{DOWN_MARK}' above the undo",
        )
    after_up = text.split(UP_MARK, 1)[1]
    if DOWN_MARK in after_up:
        up, down = after_up.split(DOWN_MARK, 1)
        return up, down
    return after_up, ""


def _sidecar(path: Path) -> tuple[Query, ...]:
    if not path.exists():
        return ()
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(
            f"Sidecar {path.name} is not valid TOML",
            str(exc),
            "fix the file; each query is a [[query]] table",
        ) from exc
    queries = []
    for i, q in enumerate(data.get("query", [])):
        if not isinstance(q, dict) or not q.get("name") or not q.get("sql"):
            raise BadInput(
                f"Sidecar {path.name}: query #{i + 1} is incomplete",
                "every [[query]] needs name and sql",
                "add the missing keys",
            )
        queries.append(Query(str(q["name"]), str(q["sql"]).strip(), q.get("expect_index")))
    return tuple(queries)


def load_migrations(directory: Path) -> list[Migration]:
    """All migrations in a directory, ordered by version; duplicate versions are refused."""
    if not directory.is_dir():
        raise BadInput(
            f"Migrations directory {directory} does not exist",
            "liteshift reads NNN_slug.sql files from it",
            "pass --migrations DIR pointing at your migrations",
        )
    migrations = [parse_migration(p) for p in sorted(directory.glob("*.sql"))]
    seen: dict[str, Migration] = {}
    for mig in migrations:
        if mig.version in seen:
            raise BadInput(
                f"Two migrations share version {mig.version}",
                f"{seen[mig.version].path.name} and {mig.path.name}",
                "give each migration its own number",
            )
        seen[mig.version] = mig
    return migrations


TRACKING_DDL = f"""CREATE TABLE IF NOT EXISTS {TRACKING_TABLE} (
    version TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_at TEXT NOT NULL,
    duration_s REAL NOT NULL,
    flow_run_id TEXT,
    batch TEXT NOT NULL,
    backup_path TEXT,
    fingerprint TEXT
)"""


@dataclass(frozen=True)
class Applied:
    """A row of the tracking table."""

    version: str
    name: str
    checksum: str
    applied_at: str
    batch: str
    backup_path: str | None
    fingerprint: str | None


def applied_migrations(con: sqlite3.Connection) -> dict[str, Applied]:
    """Tracking rows by version; empty when the table does not exist yet."""
    exists = con.execute(
        "SELECT 1 FROM sqlite_schema WHERE type='table' AND name=?", (TRACKING_TABLE,)
    ).fetchone()
    if not exists:
        return {}
    rows = con.execute(
        f"SELECT version, name, checksum, applied_at, batch, backup_path, fingerprint "
        f"FROM {TRACKING_TABLE} ORDER BY version"
    ).fetchall()
    return {r[0]: Applied(*r) for r in rows}


def check_drift(migrations: list[Migration], applied: dict[str, Applied]) -> None:
    """Refuse when an applied migration's file changed since it was applied."""
    by_version = {m.version: m for m in migrations}
    for version, row in applied.items():
        mig = by_version.get(version)
        if mig and mig.checksum != row.checksum:
            raise ChecksumDrift(
                f"Migration {mig.path.name} changed after it was applied",
                f"applied checksum {row.checksum}, file checksum now {mig.checksum}",
                "restore the file as it was applied, or write the change as a new migration",
            )


def pending(migrations: list[Migration], applied: dict[str, Applied]) -> list[Migration]:
    """Migrations not yet recorded in the tracking table, in order."""
    return [m for m in migrations if m.version not in applied]


@dataclass(frozen=True)
class IndexDef:
    """An index definition as SQLite reports it: comparable between databases."""

    name: str
    table: str
    columns: tuple[tuple[str | None, bool], ...]  # (column or expression marker, desc)
    unique: bool
    where: str | None

    def describe(self) -> str:
        cols = ", ".join(f"{c or '<expr>'}{' DESC' if d else ''}" for c, d in self.columns)
        extra = " UNIQUE" if self.unique else ""
        where = f" WHERE {self.where}" if self.where else ""
        return f"{self.table}({cols}){extra}{where}"


PARTIAL_RE = re.compile(r"\bWHERE\b(?P<where>.*)$", re.IGNORECASE | re.DOTALL)


def index_definition(con: sqlite3.Connection, name: str) -> IndexDef | None:
    """Read an index's definition with PRAGMA index_xinfo; None when it does not exist."""
    row = con.execute(
        "SELECT tbl_name, sql FROM sqlite_schema WHERE type='index' AND name=?", (name,)
    ).fetchone()
    if row is None:
        return None
    table, sql = row
    cols = tuple(
        (r[2], bool(r[3]))
        for r in con.execute(f"PRAGMA index_xinfo({quote_ident(name)})")
        if r[5]  # key columns only; the rest is the rowid
    )
    unique = bool(
        next((r[2] for r in con.execute(f"PRAGMA index_list({quote_ident(table)})") if r[1] == name), 0)
    )
    where = None
    if sql:
        m = PARTIAL_RE.search(strip_comments(sql))
        where = " ".join(m.group("where").split()) if m else None
    return IndexDef(name, table, cols, unique, where)


@dataclass(frozen=True)
class Rehearsal:
    """What the pending migrations do to a copy of the schema."""

    indexes: dict[str, IndexDef]  # declared definitions of created indexes
    touched_tables: tuple[str, ...]
    index_only: bool


def schema_copy(con: sqlite3.Connection) -> sqlite3.Connection:
    """An in-memory database with the same tables, indexes, views and triggers, and no rows."""
    mem = sqlite3.connect(":memory:", isolation_level=None)
    rows = con.execute(
        "SELECT type, sql FROM sqlite_schema WHERE sql IS NOT NULL "
        "AND name NOT LIKE 'sqlite_%' ORDER BY CASE type WHEN 'table' THEN 0 "
        "WHEN 'index' THEN 1 WHEN 'view' THEN 2 ELSE 3 END, rowid"
    ).fetchall()
    for _type, sql in rows:
        try:
            mem.execute(sql)
        except sqlite3.OperationalError as exc:
            # A virtual table (FTS, R*Tree) already made its shadow tables when it was created.
            if "already exists" not in str(exc):
                raise
    return mem


INDEX_ONLY_RE = re.compile(r"^(CREATE\s+(UNIQUE\s+)?INDEX|DROP\s+INDEX|ANALYZE|REINDEX)\b", re.I)


def rehearse(con: sqlite3.Connection, migrations: list[Migration]) -> Rehearsal:
    """Apply the ups to an empty copy of the schema: catch errors and read what they create."""
    mem = schema_copy(con)
    before = {r[0]: r for r in mem.execute("SELECT name, type, tbl_name, sql FROM sqlite_schema")}
    created: dict[str, IndexDef] = {}
    try:
        for mig in migrations:
            for name in mig.created_index_names():
                # Rehearse without an index of the same name so the declared form is what we read.
                mem.execute(f"DROP INDEX IF EXISTS {quote_ident(name)}")
            for stmt in mig.up:
                _rehearse_statement(mem, mig, stmt)
            for name in mig.created_index_names():
                definition = index_definition(mem, name)
                if definition is not None:
                    created[name] = definition
        after = {r[0]: r for r in mem.execute("SELECT name, type, tbl_name, sql FROM sqlite_schema")}
    finally:
        mem.close()
    changed = {k for k in after if before.get(k) != after[k]} | {k for k in before if k not in after}
    touched = sorted({(after.get(k) or before[k])[2] for k in changed} | {d.table for d in created.values()})
    statements = [s for m in migrations for s in m.up]
    return Rehearsal(
        indexes=created,
        touched_tables=tuple(t for t in touched if not t.startswith(("sqlite_", "liteshift_"))),
        index_only=all(INDEX_ONLY_RE.match(s) for s in statements),
    )


def _rehearse_statement(mem: sqlite3.Connection, mig: Migration, stmt: str) -> None:
    try:
        mem.execute(stmt)
    except sqlite3.Error as exc:
        raise BadInput(
            f"Migration {mig.path.name} fails on this database's schema",
            failure_detail(exc, stmt),
            "fix the migration (or the --database path); nothing was written",
        ) from exc
