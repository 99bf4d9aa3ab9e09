"""SQL text: comments, statements, the up/down directives, and identifier quotes.

Only text is handled here; nothing is executed.
"""

from __future__ import annotations

import re
import sqlite3

from liteshift.core.errors import BadInput

# A directive is one only where it starts a line: the same words inside a string literal or
# after a statement are text.
DIRECTIVE_RE = re.compile(r"^--\s*migrate:(?P<kind>[a-z]+)\b(?P<arg>[^\n]*)$", re.MULTILINE)
DIRECTIVES = ("up", "down", "rebuild", "columns")
UP_MARK = "-- migrate:up"
DOWN_MARK = "-- migrate:down"
# Statements the runner owns: a file that still says BEGIN/COMMIT keeps working.
TXN_RE = re.compile(
    r"^(BEGIN(\s+(DEFERRED|IMMEDIATE|EXCLUSIVE))?(\s+TRANSACTION)?|COMMIT(\s+TRANSACTION)?"
    r"|END(\s+TRANSACTION)?)$",
    re.IGNORECASE,
)
FORBIDDEN_RE = re.compile(r"^(VACUUM|ATTACH|DETACH|ROLLBACK|SAVEPOINT|RELEASE|PRAGMA)\b", re.I)


def quote_ident(name: str) -> str:
    """Quote an SQL identifier (table, index, column) for SQLite."""
    return '"' + name.replace('"', '""') + '"'


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


def sections(text: str, filename: str) -> list[tuple[str, str, str]]:
    """The (directive, argument, body) sections of a migration file, in order.

    Directives count only at the start of a line: `-- migrate:up`, `-- migrate:down`,
    `-- migrate:rebuild TABLE` and `-- migrate:columns`. Text before the first one is ignored.
    """
    found = list(DIRECTIVE_RE.finditer(text))
    for m in found:
        if m.group("kind") not in DIRECTIVES:
            raise BadInput(
                f"Migration {filename} has an unknown directive '-- migrate:{m.group('kind')}'",
                f"liteshift knows {', '.join('migrate:' + d for d in DIRECTIVES)}",
                "fix the directive's spelling",
            )
    if not any(m.group("kind") in ("up", "rebuild") for m in found):
        raise BadInput(
            f"Migration {filename} has no '{UP_MARK}' section",
            "liteshift cannot tell which statements apply the migration "
            "(a directive counts only at the start of a line)",
            f"put '{UP_MARK}' on its own line above the statements and '{DOWN_MARK}' above the undo",
        )
    ends = [m.start() for m in found[1:]] + [len(text)]
    return [
        (m.group("kind"), m.group("arg").strip(), text[m.end() : end])
        for m, end in zip(found, ends, strict=True)
    ]


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


PLAIN_QUOTED_RE = re.compile(
    r'"([A-Za-z_][A-Za-z0-9_]*)"|`([A-Za-z_][A-Za-z0-9_]*)`|\[([A-Za-z_][A-Za-z0-9_]*)\]'
)


def same_sql_text(sql: str) -> str:
    """SQL text compared by meaning where SQLite itself rewrites it: whitespace collapsed and plain
    identifiers unquoted (a RENAME writes "code" where the statement said code)."""
    return PLAIN_QUOTED_RE.sub(lambda m: next(g for g in m.groups() if g), " ".join(sql.split()))


def failure_detail(exc: BaseException, stmt: str) -> str:
    """SQLite's error and the statement it came from, on one line."""
    return f"{exc} in: {' '.join(stmt.split())[:120]}"
