"""Migration files: NNN_slug.sql with its up and down, its checksum, and its .toml sidecar."""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from liteshift.core.errors import BadInput
from liteshift.core.sql import sections, split_statements, strip_comments, unquote

IDENT = r"(?:\"(?:[^\"]|\"\")+\"|`(?:[^`]|``)+`|\[[^\]]+\]|[\w$]+)"

FILE_RE = re.compile(r"^(\d{3,})_([a-z0-9_]+)\.sql$")
CREATE_INDEX_RE = re.compile(
    r"^CREATE\s+(UNIQUE\s+)?INDEX\s+(IF\s+NOT\s+EXISTS\s+)?"
    rf"(?:(?P<schema>{IDENT})\s*\.\s*)?(?P<name>{IDENT})",
    re.IGNORECASE,
)
DROP_INDEX_RE = re.compile(rf"^DROP\s+INDEX\s+(IF\s+EXISTS\s+)?(?P<name>{IDENT})", re.IGNORECASE)
CREATE_TABLE_RE = re.compile(
    rf"^CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(?:main\s*\.\s*)?(?P<name>{IDENT})\s*\(", re.IGNORECASE
)
COLUMN_EXPR_RE = re.compile(rf"^--\s*(?P<col>{IDENT})\s*=\s*(?P<expr>\S.*?)\s*$")


@dataclass(frozen=True)
class Query:
    """A query a migration exists to serve, from the sidecar TOML."""

    name: str
    sql: str
    expect_index: str | None = None


@dataclass(frozen=True)
class Rebuild:
    """A table rebuild: the table, its whole target definition, and expressions for columns."""

    table: str
    create_sql: str  # the target CREATE TABLE, under the table's own name
    columns: tuple[tuple[str, str], ...] = ()  # (new column, SQL expression over the old row)

    @property
    def expressions(self) -> dict[str, str]:
        return dict(self.columns)


Step = str | Rebuild


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
    steps: tuple[Step, ...] = field(default=())  # the up in order: statements and rebuilds

    @property
    def rebuilds(self) -> tuple[Rebuild, ...]:
        return tuple(s for s in self.steps if isinstance(s, Rebuild))

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


def dropped_index_names(migrations: list[Migration]) -> set[str]:
    """Names of the indexes the ups drop: a same-named live index is theirs to replace."""
    return {unquote(m.group("name")) for mig in migrations for s in mig.up if (m := DROP_INDEX_RE.match(s))}


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
    steps, down = _parse_sections(raw.decode("utf-8"), path.name)
    return Migration(
        version=m.group(1),
        name=m.group(2),
        path=path,
        checksum=hashlib.sha256(raw).hexdigest(),
        up=tuple(s for s in steps if isinstance(s, str)),
        down=down,
        queries=_sidecar(path.with_suffix(".toml")),
        steps=tuple(steps),
    )


def _parse_sections(text: str, filename: str) -> tuple[list[Step], tuple[str, ...]]:
    steps: list[Step] = []
    down: list[str] = []
    for kind, arg, body in sections(text, filename):
        if kind == "up":
            steps += split_statements(body, f"{filename} (up)")
        elif kind == "down":
            down += split_statements(body, f"{filename} (down)")
        elif kind == "rebuild":
            steps.append(_rebuild(arg, body, filename))
        elif not steps or not isinstance(steps[-1], Rebuild) or steps[-1].columns:
            raise BadInput(
                f"Migration {filename}: '-- migrate:columns' must follow a rebuild's CREATE TABLE",
                "the columns section gives expressions for the rebuild just above it",
                "move it right after the '-- migrate:rebuild TABLE' section, once per rebuild",
            )
        else:
            steps[-1] = Rebuild(steps[-1].table, steps[-1].create_sql, _columns(body, filename))
    return steps, tuple(down)


def _rebuild(arg: str, body: str, filename: str) -> Rebuild:
    where = f"{filename} (rebuild {arg or '?'})"
    if not re.fullmatch(IDENT, arg):
        raise BadInput(
            f"Migration {filename}: '-- migrate:rebuild' needs one table name",
            f"found {arg!r}",
            "write the table after the directive, e.g. -- migrate:rebuild worklogs (quote names with "
            'spaces: "my table")',
        )
    statements = split_statements(body, where)
    table = unquote(arg)
    named = CREATE_TABLE_RE.match(statements[0]) if len(statements) == 1 else None
    if named is None:
        raise BadInput(
            f"{where} must hold exactly one CREATE TABLE statement",
            f"found {len(statements)} statement(s)"
            + (f", first: {statements[0][:60]!r}" if statements else ""),
            "put the whole target definition there; other statements go under '-- migrate:up'",
        )
    if unquote(named.group("name")).lower() != table.lower():
        raise BadInput(
            f"{where}: the CREATE TABLE names {unquote(named.group('name'))!r}, not {table!r}",
            "the target definition is written under the table's own name",
            f"write CREATE TABLE {arg} (...)",
        )
    return Rebuild(table, statements[0])


def _columns(body: str, filename: str) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    for line in body.splitlines():
        if not line.strip():
            continue
        m = COLUMN_EXPR_RE.match(line.strip())
        if m is None:
            raise BadInput(
                f"Migration {filename}: {line.strip()[:60]!r} is not 'column = expression'",
                "each line under '-- migrate:columns' reads: -- column = SQL expression over the old row",
                "write it as, e.g.: -- time_spent_seconds = max(time_spent_seconds, 1)",
            )
        pairs.append((unquote(m.group("col")), m.group("expr").rstrip(";")))
    return tuple(pairs)


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
