"""`liteshift plan`: a dry run that measures on a copy and never writes the database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import snapshot

from liteshift.cli import main
from liteshift.core.config import RunConfig
from liteshift.flows.approval import Approval, ApprovalDenied, check_answer
from liteshift.tasks.dry_run import DryRunFailed, dry_run, dry_run_or_refuse, render_plan

FIXTURES = Path(__file__).parent / "fixtures"


def test_dry_run_measures_and_writes_nothing(make_db):
    db = make_db()
    digest, before = db.read_bytes(), snapshot(db)
    result = dry_run(RunConfig.model_validate({"database": db}))
    assert db.read_bytes() == digest and snapshot(db) == before
    assert result.error is None
    assert result.pending == ["001_add_composite_indexes"]
    assert result.lock_seconds is not None and result.lock_seconds > 0
    assert result.size_after is not None and result.size_after > result.size_before
    assert set(result.index_bytes) == set(result.indexes) and all(result.index_bytes.values())
    assert [q.index_after for q in result.queries] == [q.expect_index for q in result.queries]
    assert all("USING INDEX idx_worklogs_company" in q.before for q in result.queries[:2])
    assert list(db.parent.glob("liteshift-plan-*")) == []  # the copy is gone


def test_dry_run_reports_a_migration_that_would_fail_on_the_data(make_db):
    db = make_db()
    before = snapshot(db)
    cfg = RunConfig.model_validate({"database": db, "migrations_dir": FIXTURES / "unique_over_duplicates"})
    result = dry_run(cfg)
    assert result.error is not None
    assert result.error.startswith(
        "Migration 001_unique_author.sql failed: UNIQUE constraint failed: worklogs.author_email"
    )
    assert "**Would FAIL**" in render_plan(result)
    with pytest.raises(DryRunFailed) as err:
        dry_run_or_refuse(cfg)
    assert err.value.what == f"The pending migrations of {db} fail on a copy"
    assert err.value.exit_code == 2
    assert snapshot(db) == before


def test_plan_command_prints_json_and_exit_codes(make_db, capsys):
    db = make_db()
    assert main(["plan", "--database", str(db), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pending"] == ["001_add_composite_indexes"] and out["growth_pct"] > 0
    assert out["undo"] == {"001_add_composite_indexes": "down-section"}
    bad = ["plan", "--database", str(db), "--migrations", str(FIXTURES / "unique_over_duplicates")]
    assert main(bad) == 1
    assert "Would FAIL" in capsys.readouterr().out


def test_plan_refuses_a_missing_migrations_dir(make_db, capsys):
    db = make_db()
    assert main(["plan", "--database", str(db), "--migrations", str(FIXTURES / "empty")]) == 2
    assert "Migrations directory" in capsys.readouterr().err


def test_approval_answer_decides():
    assert check_answer(Approval(approve=True, comment="looks fine"), "w.db") == "approved: looks fine"
    with pytest.raises(ApprovalDenied) as err:
        check_answer(Approval(approve=False, comment="not tonight"), "w.db")
    assert str(err.value) == (
        "Migration of w.db was not approved: the reviewer answered: not tonight. "
        "Try: start a new run when the plan is acceptable; nothing was written"
    )


def test_an_unanswered_approval_is_a_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.exceptions import FlowPauseTimeout

    from liteshift.flows import approval

    def nobody_answers(**_: object) -> Approval:
        raise FlowPauseTimeout("Flow run was paused and never resumed.")

    monkeypatch.setattr(approval, "pause_flow_run", nobody_answers)
    with pytest.raises(approval.ApprovalTimedOut) as err:
        approval.ask_approval("# plan", Path("w.db"), 30)
    assert err.value.exit_code == 2
    assert str(err.value) == (
        "Migration of w.db was not approved in time: nobody answered the approval form within 30 s; "
        "nothing was written. Try: approve the next run in the Prefect UI (Resume, tick approve) "
        "sooner, raise approval_timeout_s, or run again"
    )


def test_plan_refuses_rows_that_break_a_rebuild_and_shows_the_rebuild(make_db, tmp_path, capsys):
    import sqlite3

    from helpers import ALL_MIGRATIONS, snapshot

    db = make_db()
    assert main(["plan", "--database", str(db), "--migrations", str(ALL_MIGRATIONS)]) == 0
    out = capsys.readouterr().out
    assert "-- migrate:rebuild worklogs\nCREATE TABLE worklogs (" in out
    assert "- **Rebuilds** worklogs (blocking): 2,000 rows copied, cut-over " in out
    con = sqlite3.connect(db)
    con.execute("UPDATE factorial_leaves SET status = 'lost' WHERE id = 3")
    con.commit()
    con.close()
    before = snapshot(db)
    assert main(["plan", "--database", str(db), "--migrations", str(ALL_MIGRATIONS)]) == 2
    assert capsys.readouterr().err.strip() == (
        "Error: 002_multi_tenant_constraints.sql: rows of factorial_leaves break the new definition: "
        "constraint \"leave_status_known\" CHECK (\"status\" IN ('approved', 'pending', 'rejected', "
        "'cancelled')): 1 row(s), first: rowid 3\nTry: fix those rows, or give the column an expression "
        "under '-- migrate:columns', then run again; nothing was written"
    )
    assert snapshot(db) == before


def test_the_plan_says_how_each_migration_would_be_undone(make_db, tmp_path: Path):
    from helpers import migrations_dir

    db = make_db()
    d = migrations_dir(
        tmp_path,
        {
            "001_idx.sql": "-- migrate:up\nCREATE INDEX idx_secs ON worklogs(time_spent_seconds);\n",
            "002_fix.sql": "-- migrate:up\nUPDATE teams SET name = trim(name);\n",
        },
    )
    text = render_plan(dry_run(RunConfig.model_validate({"database": db, "migrations_dir": d})))
    assert (
        "- **Undo** of 001_idx: its derived down (the inverse of each step; every write since is kept)\n"
        "- **Undo** of 002_fix: only the backup: a rollback restores what it changed, and refuses if the "
        "application wrote to those tables since\n"
    ) in text
