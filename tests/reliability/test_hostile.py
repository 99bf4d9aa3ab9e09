"""Hostile parameters: allowed roots for deployment runs, quoted identifiers, private backups."""

from __future__ import annotations

import os
import sqlite3
import stat
import uuid
from pathlib import Path

import pytest
from checks import DEFAULT_MIGRATIONS_DIR, snapshot

from liteshift.core import guard
from liteshift.core.config import RunConfig
from liteshift.core.errors import BadInput
from liteshift.tasks.backup import backup_database
from liteshift.tasks.integrity import check_integrity
from liteshift.tasks.migrate import apply_migrations
from liteshift.tasks.query_plan import check_query_plans
from liteshift.tasks.validate import validate_database
from liteshift.tasks.verify_indexes import verify_indexes


@pytest.fixture
def roots(tmp_path, monkeypatch):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    monkeypatch.setenv(guard.ENV, os.pathsep.join([str(allowed), str(tmp_path / "second")]))
    return allowed


def _message(exc: pytest.ExceptionInfo[BadInput]) -> str:
    return str(exc.value)


def test_database_under_an_allowed_root_is_accepted(roots):
    guard.check_deployment_paths(RunConfig(database=roots / "sub" / "w.db"))


def test_database_outside_the_roots_is_refused(roots, tmp_path):
    with pytest.raises(guard.PathNotAllowed) as exc:
        guard.check_deployment_paths(RunConfig(database=Path("/etc/passwd")))
    assert _message(exc) == (
        "The database /etc/passwd is outside the allowed roots: it resolves to /etc/passwd; a deployment "
        f"run may only use {roots}{os.pathsep}{tmp_path / 'second'}. Try: move it under an allowed root, "
        "or add its directory to LITESHIFT_ALLOWED_ROOTS where the worker runs"
    )
    assert exc.value.exit_code == 2


def test_dotdot_escape_is_resolved_before_comparing(roots):
    sneaky = roots / ".." / ".." / "etc" / "w.db"
    with pytest.raises(guard.PathNotAllowed, match=r"^The database .* resolves to /.*etc/w\.db;"):
        guard.check_deployment_paths(RunConfig(database=sneaky))


def test_symlink_escape_is_resolved_before_comparing(roots, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (roots / "link").symlink_to(outside)
    with pytest.raises(guard.PathNotAllowed, match=f"resolves to {outside}/w.db;"):
        guard.check_deployment_paths(RunConfig(database=roots / "link" / "w.db"))


def test_a_root_prefix_is_not_a_root(roots):
    """/x/allowed-evil is not under /x/allowed: compare path components, not strings."""
    with pytest.raises(guard.PathNotAllowed):
        guard.check_deployment_paths(RunConfig(database=Path(f"{roots}-evil") / "w.db"))


def test_without_configured_roots_only_data_in_the_working_directory(monkeypatch, tmp_path):
    monkeypatch.delenv(guard.ENV, raising=False)
    monkeypatch.chdir(tmp_path / "work") if (tmp_path / "work").mkdir() is None else None
    assert guard.allowed_roots() == [Path(os.path.realpath(tmp_path / "work" / "data"))]
    guard.check_deployment_paths(
        RunConfig(database=Path("data/worklog_storage.db"), report_dir=Path("reports"))
    )
    with pytest.raises(guard.PathNotAllowed):
        guard.check_deployment_paths(RunConfig(database=tmp_path / "w.db"))


@pytest.mark.parametrize(
    ("field", "what"),
    [
        ("backup_dir", "backup directory"),
        ("report_dir", "report directory"),
        ("migrations_dir", "migrations"),
    ],
)
def test_every_path_parameter_is_checked(roots, tmp_path, field, what):
    cfg = RunConfig(database=roots / "w.db", **{field: tmp_path / "elsewhere"})
    with pytest.raises(guard.PathNotAllowed, match=f"^The {what}"):
        guard.check_deployment_paths(cfg)


def test_project_migrations_and_reports_are_allowed(roots):
    cfg = RunConfig(
        database=roots / "w.db",
        migrations_dir=DEFAULT_MIGRATIONS_DIR,
        report_dir=Path("reports"),
    )
    guard.check_deployment_paths(cfg)


def test_rollback_deployment_paths_are_checked(roots, tmp_path):
    guard.check_rollback_paths(str(roots / "w.db"), DEFAULT_MIGRATIONS_DIR, str(roots / "w.db.backup-1"))
    with pytest.raises(guard.PathNotAllowed, match=r"^The backup /tmp/x\.db is outside"):
        guard.check_rollback_paths(str(roots / "w.db"), DEFAULT_MIGRATIONS_DIR, "/tmp/x.db")


def test_a_deployment_run_outside_the_roots_is_refused_before_anything_is_written(run_cli, new_db, tmp_path):
    """A real flow run that Prefect's runtime reports as a deployment run (the id is mocked)."""
    db = new_db(500)
    before = snapshot(db)
    reports = tmp_path / "reports"
    env = {
        "PREFECT__RUNTIME__DEPLOYMENT__ID": str(uuid.uuid4()),
        guard.ENV: str(tmp_path / "allowed"),
    }
    proc = run_cli("run", "--database", db, "--report-dir", reports, env=env)
    assert proc.returncode == 2, proc.stderr
    assert f"Error: The database {db} is outside the allowed roots: it resolves to {db}" in proc.stderr
    assert snapshot(db) == before
    assert not reports.exists(), "no report may be written for a refused deployment run"
    assert list(tmp_path.glob("w.db.backup-*")) == []


# ---------------------------------------------------------------- identifiers are quoted

# No spaces: EXPLAIN QUERY PLAN prints names unquoted, and the plan parser splits on spaces.
WEIRD_TABLE = 'wl"];DROP/**/TABLE/**/companies;--'
WEIRD_INDEX = 'idx"q"]`[1'


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def test_hostile_identifiers_are_quoted_in_every_step(tmp_path, make_migrations):
    db = tmp_path / "weird.db"
    con = sqlite3.connect(db)
    con.execute(f'CREATE TABLE {_quoted(WEIRD_TABLE)} (id INTEGER PRIMARY KEY, "a b" TEXT, "c""d" INT)')
    con.executemany(
        f"INSERT INTO {_quoted(WEIRD_TABLE)} VALUES (?, ?, ?)", [(i, f"v{i}", i) for i in range(500)]
    )
    con.execute("CREATE TABLE companies (id INTEGER PRIMARY KEY)")
    con.commit()
    con.close()
    mig_dir = make_migrations(
        {
            "001_weird.sql": f"-- migrate:up\nCREATE INDEX {_quoted(WEIRD_INDEX)} "
            f'ON {_quoted(WEIRD_TABLE)}("a b", "c""d");\n'
            f"-- migrate:down\nDROP INDEX {_quoted(WEIRD_INDEX)};\n",
            "001_weird.toml": f'[[query]]\nname = "weird"\nsql = """SELECT * FROM {_quoted(WEIRD_TABLE)} '
            f'WHERE "a b" = \'v1\' AND "c""d" > 0"""\nexpect_index = \'{WEIRD_INDEX}\'\n',
        }
    )
    cfg = RunConfig(database=db, migrations_dir=mig_dir)
    v = validate_database(cfg)
    assert v.touched_tables == [WEIRD_TABLE]
    from liteshift.core.migrations import load_migrations

    queries = [q for m in load_migrations(mig_dir) for q in m.queries]
    b = backup_database(cfg)
    assert b.counts == {WEIRD_TABLE: 500, "companies": 0}
    a = apply_migrations(cfg, b.path)
    assert a.applied == ["001_weird"]
    assert [i.name for i in verify_indexes(cfg, v.indexes)] == [WEIRD_INDEX]
    assert check_integrity(cfg, v.touched_tables, v.index_only, a.rows_changed).counts == {WEIRD_TABLE: 500}
    [result] = check_query_plans(cfg, queries, b.path)
    assert result.plan.index == WEIRD_INDEX
    con = sqlite3.connect(db)
    assert con.execute("SELECT count(*) FROM companies").fetchone() == (0,)  # the table is still there
    con.close()


# ---------------------------------------------------------------- backups are private


def test_backup_is_created_0600_whatever_the_umask(new_db):
    db = new_db(500)
    old = os.umask(0)
    try:
        b = backup_database(RunConfig(database=db))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(b.path).st_mode) == 0o600
