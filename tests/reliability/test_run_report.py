"""One real `liteshift run` per scenario: exit codes, the report's statements, and no row data."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from pathlib import Path

import pytest
from checks import DEFAULT_MIGRATIONS_DIR, json_summary


@pytest.fixture(scope="module")
def journal_mode_run(tmp_path_factory, prefect_env):
    """A complete run on a database in rollback-journal mode (not WAL)."""
    import subprocess

    from checks import BIN

    from liteshift.demo import build_demo_db

    root = tmp_path_factory.mktemp("journal-run")
    db = build_demo_db(root / "w.db", 20_000, wal=False)
    proc = subprocess.run(
        [
            str(BIN / "liteshift"),
            "run",
            "--database",
            str(db),
            "--report-dir",
            str(root / "reports"),
            "--json",
        ],
        env=prefect_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return db, proc


def test_run_in_rollback_journal_mode_succeeds_and_says_readers_are_blocked(journal_mode_run):
    _, proc = journal_mode_run
    assert proc.returncode == 0, proc.stderr
    summary = json_summary(proc)
    warning = "journal mode is delete, not WAL: readers are blocked while the indexes are written"
    assert summary["status"] == "completed"
    assert summary["journal_mode"] == "delete"
    assert warning in summary["warnings"]
    assert warning in Path(summary["report_path"]).read_text()
    assert summary["lock_seconds"] > 0


def test_backup_of_a_real_run_is_private(journal_mode_run):
    _db, proc = journal_mode_run
    backup = json_summary(proc)["backup"]["path"]
    assert stat.S_IMODE(os.stat(backup).st_mode) == 0o600


def _row_values(db: Path) -> set[str]:
    con = sqlite3.connect(db)
    try:
        values = set()
        for sql in (
            "SELECT DISTINCT author_email FROM worklogs",
            "SELECT DISTINCT comment FROM worklogs",
            "SELECT DISTINCT issue_key FROM worklogs",
            "SELECT DISTINCT user_email FROM billing_rates",
        ):
            values |= {str(r[0]) for r in con.execute(sql)}
        return values
    finally:
        con.close()


def test_report_and_artifacts_carry_no_row_data(journal_mode_run, prefect_env):
    """Emails, comments and issue keys from the rows never reach the report files.

    The declared queries' literals ('user@example.com') come from the sidecar files in migrations/,
    which are code under review, not row data: they are allowed, and nothing else.
    """
    db, proc = journal_mode_run
    summary = json_summary(proc)
    md = Path(summary["report_path"])
    texts = {
        "markdown": md.read_text(),
        "json": md.with_suffix(".json").read_text(),
        "stdout": proc.stdout,
    }
    texts["artifacts"] = _artifacts_text(prefect_env["PREFECT_API_URL"])
    assert "liteshift execution report" in texts["artifacts"]
    sidecars = " ".join(p.read_text() for p in DEFAULT_MIGRATIONS_DIR.glob("*.toml"))
    secrets = {v for v in _row_values(db) if v not in sidecars}
    assert len(secrets) > 100
    for where, text in texts.items():
        leaked = sorted(v for v in secrets if v in text)
        assert leaked == [], f"row data in the {where}: {leaked[:5]}"
    assert json.loads(texts["json"])["database"] == str(db)


def _artifacts_text(api: str) -> str:
    """Every artifact the Prefect API holds for this session's runs, as one text."""
    import urllib.request

    request = urllib.request.Request(
        f"{api}/artifacts/filter", data=b"{}", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.dumps(json.loads(response.read()))


def test_cli_bad_input_exits_2_with_error_and_try_lines(run_cli, tmp_path):
    db = tmp_path / "missing.db"
    proc = run_cli("run", "--database", db)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-2:] == [
        f"Error: Database {db} does not exist: there is no file at that path",
        "Try: check the --database path (liteshift never creates the database it migrates)",
    ]
    assert not db.exists()
