"""Migration files: NNN_slug.sql with its up and down, its checksum, and its .toml sidecar."""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from liteshift.errors import BadInput
from liteshift.sql import sections, split_statements, strip_comments, unquote

FILE_RE = re.compile(r"^(\d{3,})_([a-z0-9_]+)\.sql$")
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
    up_text, down_text = sections(text, path.name)
    return Migration(
        version=m.group(1),
        name=m.group(2),
        path=path,
        checksum=hashlib.sha256(raw).hexdigest(),
        up=split_statements(up_text, f"{path.name} (up)"),
        down=split_statements(down_text, f"{path.name} (down)") if down_text else (),
        queries=_sidecar(path.with_suffix(".toml")),
    )


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
