"""Helpers the tests share: content snapshots, small migration directories, and the application
as a separate writer process."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ALL_MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def _only_001() -> Path:
    """The project's migration 001 alone: the suites about the pipeline's mechanics are written
    around it; migration 002 (rebuilds) has tests of its own (test_rebuild.py, e2e)."""
    target = Path(tempfile.mkdtemp(prefix="liteshift-test-migrations-001-"))
    for f in ALL_MIGRATIONS.glob("001_*"):
        shutil.copy(f, target / f.name)
    return target


PROJECT_MIGRATIONS = _only_001()


def snapshot(path: Path) -> dict[str, str]:
    """Schema and per-table content digests of a database, ignoring SQLite's own statistics."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        result = {}
        for kind, name, sql in con.execute(
            "SELECT type, name, sql FROM sqlite_schema WHERE name NOT LIKE 'sqlite_stat%' ORDER BY name"
        ):
            result[f"schema:{kind}:{name}"] = sql or ""
            if kind == "table":
                digest = hashlib.sha256()
                quoted = '"' + name.replace('"', '""') + '"'
                try:
                    rows = con.execute(f"SELECT * FROM {quoted} ORDER BY rowid").fetchall()
                except sqlite3.OperationalError:  # WITHOUT ROWID: in primary-key order
                    rows = con.execute(f"SELECT * FROM {quoted}").fetchall()
                for row in rows:
                    digest.update(repr(row).encode())
                result[f"rows:{name}"] = digest.hexdigest()
        return result
    finally:
        con.close()


def user_snapshot(path: Path) -> dict[str, str]:
    """A snapshot without liteshift's own tables (tracking, lock)."""
    return {k: v for k, v in snapshot(path).items() if "liteshift_" not in k}


def migrations_dir(tmp_path: Path, files: dict[str, str], with_project: bool = False) -> Path:
    """A migrations directory holding the given files (and the project's 001 when asked)."""
    target = tmp_path / "migrations"
    target.mkdir(exist_ok=True)
    if with_project:
        for f in PROJECT_MIGRATIONS.iterdir():  # 001
            shutil.copy(f, target / f.name)
    for name, text in files.items():
        (target / name).write_text(text, "utf-8")
    return target


def index_names(path: Path) -> set[str]:
    """Names of the indexes in a database."""
    con = sqlite3.connect(path)
    try:
        return {r[0] for r in con.execute("SELECT name FROM sqlite_schema WHERE type = 'index'")}
    finally:
        con.close()


def tracked_versions(path: Path) -> list[str]:
    """Versions in liteshift_migrations ([] when the table does not exist)."""
    con = sqlite3.connect(path)
    try:
        try:
            return [r[0] for r in con.execute("SELECT version FROM liteshift_migrations ORDER BY version")]
        except sqlite3.OperationalError:
            return []
    finally:
        con.close()


class WriterProcess:
    """The application as a separate process beside liteshift, running `script` with argv
    [log, errors, stop, ready, done, *args]: it appends one line per commit to log (an error line
    to errors), touches ready after its first commit, ends when stop exists and writes a JSON
    summary to done. Stopped by its stop file, else killed by its PID."""

    def __init__(self, script: str, work: Path, args: Sequence[object], stdin: str | None = None) -> None:
        work.mkdir()
        self.log, self.errors = work / "ops.log", work / "errors.log"
        self.stop_file, self.ready, self.done = work / "stop", work / "ready", work / "done.json"
        self.log.touch()
        self.errors.touch()
        files = (self.log, self.errors, self.stop_file, self.ready, self.done)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script, *map(str, (*files, *args))],
            stdin=None if stdin is None else subprocess.PIPE,
            text=True,
        )
        try:
            if stdin is not None:
                assert self.proc.stdin is not None
                self.proc.stdin.write(stdin)
                self.proc.stdin.close()
            deadline = time.monotonic() + 30
            while not self.ready.exists():
                assert self.proc.poll() is None, f"the writer exited: {self.error_lines()}"
                assert time.monotonic() < deadline, "the writer committed nothing in 30 s"
                time.sleep(0.02)
        except BaseException:
            self.stop()
            raise

    def lines(self) -> list[str]:
        """One line per committed operation, in commit order (a line still being written is left out)."""
        return self.log.read_text("utf-8").split("\n")[:-1]

    def error_lines(self) -> list[str]:
        return self.errors.read_text("utf-8").splitlines()

    def wait_commits(self, count: int, timeout: float = 20.0) -> None:
        """Wait until the writer has committed `count` more operations."""
        target = len(self.lines()) + count
        deadline = time.monotonic() + timeout
        while len(self.lines()) < target:
            assert self.proc.poll() is None, f"the writer exited: {self.error_lines()}"
            assert time.monotonic() < deadline, f"the writer stalled: {len(self.lines())} of {target} commits"
            time.sleep(0.02)

    def stop(self) -> dict[str, float] | None:
        """Ask the writer to stop; kill its PID when it has not within 30 s. Its summary, or None
        when it had to be killed or failed."""
        self.stop_file.touch()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
            return None
        if self.proc.returncode != 0 or not self.done.exists():
            return None
        return dict(json.loads(self.done.read_text("utf-8")))


# The fleet's tests: tiny databases and a UNIQUE index that fails on the duplicates of some.
FLEET_MIGRATIONS = Path(__file__).resolve().parent / "fixtures" / "unique_over_duplicates"
FLEET_INDEX = "idx_worklogs_author_unique"


def fleet_db(path: Path, duplicates: bool = False) -> Path:
    """20 worklogs; with duplicates, e-mails repeat (migration FLEET_MIGRATIONS then fails)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("CREATE TABLE worklogs (id INTEGER PRIMARY KEY, author_email TEXT)")
    emails = [f"user{i % 5 if duplicates else i}@example.com" for i in range(20)]
    con.executemany("INSERT INTO worklogs (author_email) VALUES (?)", [(e,) for e in emails])
    con.close()
    return path


def has_fleet_index(path: Path) -> bool:
    """The database has FLEET_INDEX."""
    con = sqlite3.connect(path)
    try:
        found = con.execute("SELECT count(*) FROM sqlite_schema WHERE name = ?", (FLEET_INDEX,)).fetchone()
        return bool(found[0] == 1)
    finally:
        con.close()
