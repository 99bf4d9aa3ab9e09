"""The command line: exit codes, one JSON object, one clear line for bad input."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from helpers import PROJECT_MIGRATIONS, migrations_dir, snapshot, tracked_versions, user_snapshot

from liteshift.cli import main

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_run_json_then_status_then_rollback(
    make_db, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = make_db()
    before = user_snapshot(db)
    code = main(["run", "--database", str(db), "--report-dir", str(tmp_path / "r"), "--json"])
    out = capsys.readouterr().out
    assert code == 0
    summary = json.loads(out)  # exactly one JSON object on stdout
    assert summary["status"] == "completed"
    assert summary["applied"] == ["001_add_composite_indexes"]
    assert summary["backup"]["bytes"] > 0 and summary["lock_seconds"] > 0
    q = {x["name"]: x for x in summary["queries"]}["user_worklogs_range"]
    assert q["plan"]["index"] == "idx_worklogs_user_range"
    assert q["plan"]["equality"] == ["company_id", "author_email"]
    assert q["before"]["p50_ms"] > 0 and q["after"]["p95_ms"] >= q["after"]["p50_ms"]
    assert summary["report_path"].endswith(".md")

    assert main(["status", "--database", str(db), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert [a["version"] for a in status["applied"]] == ["001"] and status["pending"] == []

    assert main(["rollback", "--database", str(db)]) == 0
    assert capsys.readouterr().out.startswith("Rollback: down: ran the down of 001_add_composite_indexes")
    assert user_snapshot(db) == before and tracked_versions(db) == []


def test_second_run_says_nothing_to_migrate(
    make_db, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = make_db()
    assert main(["run", "--database", str(db), "--report-dir", str(tmp_path / "r")]) == 0
    capsys.readouterr()
    assert main(["run", "--database", str(db), "--report-dir", str(tmp_path / "r")]) == 0
    assert capsys.readouterr().out == (
        f"Nothing to migrate: {db} is up to date (1 applied, none pending in {PROJECT_MIGRATIONS}); "
        "no flow run started.\n"
    )


INSTANT = """
import sys
from liteshift.cli import main
codes = [main(args) for args in {commands}]
print(codes, sorted(m for m in sys.modules if m == "prefect" or m.startswith("prefect.")))
"""


def test_status_plan_and_a_no_op_run_never_import_prefect(make_db, tmp_path: Path) -> None:
    import subprocess
    import sys

    db = make_db()
    assert main(["run", "--database", str(db), "--report-dir", str(tmp_path / "r")]) == 0
    commands = [
        ["status", "--database", str(db)],
        ["plan", "--database", str(db)],
        ["run", "--database", str(db), "--report-dir", str(tmp_path / "r")],
    ]
    proc = subprocess.run(
        [sys.executable, "-c", INSTANT.format(commands=commands)], capture_output=True, text=True, check=True
    )
    assert proc.stdout.splitlines()[-1] == "[0, 0, 0] []"


def test_bad_input_exits_2_with_one_clear_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.db"
    assert main(["run", "--database", str(missing), "--report-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"Error: Database {missing} does not exist: there is no file at that path\n"
        "Try: check the --database path (liteshift never creates the database it migrates)\n"
    )


def test_failed_step_exits_1_after_rollback(
    make_db, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = make_db()
    before = user_snapshot(db)
    d = migrations_dir(
        tmp_path,
        {
            "001_i.sql": "-- migrate:up\nCREATE INDEX i_team ON worklogs(team_id);\n"
            "-- migrate:down\nDROP INDEX i_team;\n",
            "001_i.toml": '[[query]]\nname = "by_comment"\n'
            'sql = "SELECT * FROM worklogs WHERE comment = \'x\'"\nexpect_index = "i_team"\n',
        },
    )
    code = main(["run", "--database", str(db), "--migrations", str(d), "--report-dir", str(tmp_path / "r")])
    captured = capsys.readouterr()
    assert code == 1
    assert "Rollback: down: ran the down of 001_i" in captured.out
    # After the progress lines of the backup and the migrate step, one error and what to do.
    progress, error = captured.err.split("Error: ", 1)
    assert [x.split(":")[0] for x in progress.splitlines()] == ["backup", "migrate"]
    assert error.startswith("Query by_comment does not use index i_team: plan is SCAN worklogs")
    assert user_snapshot(db) == before and tracked_versions(db) == []


def test_status_reports_drift_with_exit_2(
    make_db, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = make_db()
    d = migrations_dir(tmp_path, {"001_i.sql": "-- migrate:up\nCREATE INDEX i_team ON worklogs(team_id);\n"})
    assert (
        main(["run", "--database", str(db), "--migrations", str(d), "--report-dir", str(tmp_path / "r")]) == 0
    )
    (d / "001_i.sql").write_text("-- migrate:up\nCREATE INDEX i_team ON worklogs(started);\n")
    capsys.readouterr()
    before = snapshot(db)
    assert main(["status", "--database", str(db), "--migrations", str(d)]) == 2
    assert "DRIFT    001_i.sql: applied " in capsys.readouterr().out
    assert (
        main(["run", "--database", str(db), "--migrations", str(d), "--report-dir", str(tmp_path / "r")]) == 2
    )
    assert capsys.readouterr().err.startswith("Error: Migration 001_i.sql changed after it was applied")
    assert snapshot(db) == before


def test_rollback_of_a_damaged_database_exits_2_with_a_message(
    make_db, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = make_db()
    assert main(["run", "--database", str(db), "--report-dir", str(tmp_path / "r")]) == 0
    capsys.readouterr()
    with sqlite3.connect(db) as con:  # everything in the main file, so the bytes tell
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with db.open("r+b") as fh:  # keep the header, damage the pages behind it
        fh.seek(4096)
        fh.write(b"\xff" * 8192)
    before = db.read_bytes()
    assert main(["rollback", "--database", str(db)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"Error: Database {db} cannot be rolled back: ")
    assert err.endswith(
        "Try: restore the database from your last good backup or run 'sqlite3 DB .recover'; "
        "liteshift will not migrate a damaged file\n"
    )
    assert db.read_bytes() == before


def test_the_issue_case_an_update_after_an_index_migration_survives_the_rollback(
    make_db, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An index-only up without a down, `liteshift run`, an application UPDATE, `liteshift rollback`."""
    db = make_db()
    d = migrations_dir(
        tmp_path, {"001_idx.sql": "-- migrate:up\nCREATE INDEX idx_secs ON worklogs(time_spent_seconds);\n"}
    )
    assert (
        main(["run", "--database", str(db), "--migrations", str(d), "--report-dir", str(tmp_path / "r")]) == 0
    )
    capsys.readouterr()
    assert main(["status", "--database", str(db), "--migrations", str(d)]) == 0
    assert "001_idx  at " in (out := capsys.readouterr().out) and out.endswith("(undo: derived down)\n")
    with sqlite3.connect(db) as con:
        con.execute("UPDATE worklogs SET comment = 'APP-UPDATE-1' WHERE id = 5")
    assert main(["rollback", "--database", str(db), "--migrations", str(d)]) == 0
    assert capsys.readouterr().out.startswith("Rollback: derived-down: ran the derived down of 001_idx")
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT comment FROM worklogs WHERE id = 5").fetchone() == ("APP-UPDATE-1",)
    assert "idx_secs" not in {r for r in snapshot(db) if r.startswith("schema:index:")}


def test_rollback_finish_ends_the_restore_proof(
    make_db, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = make_db()
    d = migrations_dir(
        tmp_path, {"001_fix.sql": "-- migrate:up\nUPDATE teams SET name = name || '!' WHERE id = 1;\n"}
    )
    assert (
        main(["run", "--database", str(db), "--migrations", str(d), "--report-dir", str(tmp_path / "r")]) == 0
    )
    capsys.readouterr()
    assert main(["status", "--database", str(db), "--migrations", str(d)]) == 0
    assert capsys.readouterr().out.endswith("(undo: backup under the write-ledger proof)\n")
    assert main(["rollback", "--finish", "--database", str(db), "--migrations", str(d)]) == 0
    assert capsys.readouterr().out == (
        "Rollback: ended the restore proof of 001_fix and removed the write ledger from teams; a "
        "migration without a down can no longer be undone from its backup\n"
    )
    with sqlite3.connect(db) as con:
        assert con.execute(
            "SELECT count(*) FROM sqlite_schema WHERE name LIKE 'liteshift_w%'"
        ).fetchone() == (0,)
    before = snapshot(db)
    assert main(["rollback", "--database", str(db), "--migrations", str(d)]) == 1
    err = capsys.readouterr().err
    assert (
        "liteshift cannot prove that no write since the migration would be lost: its restore proof "
        "was ended by 'liteshift rollback --finish'" in err
    )
    assert snapshot(db) == before
