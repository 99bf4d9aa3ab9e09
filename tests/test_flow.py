"""The migrate-database flow under Prefect: success, idempotent rerun, and a failure at each step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import index_names, snapshot, tracked_versions, user_snapshot

import liteshift.flows.migrate as flow_mod
from liteshift.core.errors import BadInput, CheckFailed
from liteshift.core.names import db_key
from liteshift.flows.steps import step_task

pytestmark = pytest.mark.usefixtures("prefect_harness")

FAST = {"bench_min_runs": 3, "bench_budget_s": 0.0, "retry_delay_s": 0.0}


def run(db: Path, tmp_path: Path, **params: Any) -> dict[str, Any]:
    report = flow_mod.migrate_database(str(db), report_dir=str(tmp_path / "reports"), **{**FAST, **params})
    return report.summary()


def test_success_then_idempotent_rerun(make_db, tmp_path: Path) -> None:
    db = make_db()
    summary = run(db, tmp_path)
    assert summary["status"] == "completed"
    assert summary["applied"] == ["001_add_composite_indexes"]
    assert [s["name"] for s in summary["steps"]] == [
        "validate",
        "maintenance-window",
        "backup",
        "migrate",
        "verify-indexes",
        "integrity",
        "query-plan-benchmark",
    ]
    assert all(s["state"] == "passed" for s in summary["steps"])
    assert {"idx_worklogs_user_range", "idx_billing_rates_lookup"} <= index_names(db)
    assert tracked_versions(db) == ["001"]
    assert Path(summary["backup"]["path"]).exists()
    assert summary["size_after"] > summary["size_before"]
    report = Path(summary["report_path"]).read_text()
    assert "## Query plans and timings" in report and "idx_worklogs_instance_range" in report
    assert json.loads(Path(summary["report_path"]).with_suffix(".json").read_text())["status"] == "completed"

    before = snapshot(db)
    again = run(db, tmp_path)
    assert again["status"] == "nothing-to-do"
    assert [s["name"] for s in again["steps"]] == ["validate"]
    assert snapshot(db) == before


def test_artifacts_are_keyed_by_database(make_db, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    db = make_db(name="artifact_check.db")
    key = db_key(db)
    assert key.startswith("artifact-check-db-") and len(key) == len("artifact-check-db-") + 8
    run(db, tmp_path)
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[f"liteshift-report-{key}", f"liteshift-bench-{key}"])
            )
        )
    kinds = {a.key: a.type for a in found}
    assert kinds == {f"liteshift-report-{key}": "markdown", f"liteshift-bench-{key}": "table"}
    report = next(a for a in found if a.type == "markdown")
    assert "liteshift execution report: artifact_check.db" in str(report.data)


def _boom(name: str):
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise CheckFailed(f"Injected failure in {name}", "test", "none")

    return step_task(fail, name, retry=False)


@pytest.mark.parametrize(
    ("attr", "step", "rollback_action"),
    [
        ("validate", "validate", None),
        ("backup", "backup", None),
        ("migrate", "migrate", "nothing"),
        ("verify", "verify-indexes", "down"),
        ("integrity", "integrity", "down"),
        ("query_plans", "query-plan-benchmark", "down"),
    ],
)
def test_a_failure_at_each_step_leaves_the_database_as_it_was(
    make_db,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    attr: str,
    step: str,
    rollback_action: str | None,
) -> None:
    db = make_db()
    before = user_snapshot(db)
    monkeypatch.setattr(flow_mod, attr, _boom(step))
    with pytest.raises(CheckFailed) as err:
        run(db, tmp_path)
    assert str(err.value) == f"Injected failure in {step}: test. Try: none"
    report = err.value.liteshift_report  # type: ignore[attr-defined]
    assert report.status == "failed"
    assert report.steps[-1].name == step and report.steps[-1].state == "failed"
    assert (report.rollback.action if report.rollback else None) == rollback_action
    assert user_snapshot(db) == before
    assert tracked_versions(db) == []


def test_rollback_subflow_is_its_own_run(make_db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    db = make_db(name="subflow_check.db")
    monkeypatch.setattr(flow_mod, "integrity", _boom("integrity"))
    with pytest.raises(CheckFailed) as err:
        run(db, tmp_path)
    parent = err.value.liteshift_report.flow_run_id  # type: ignore[attr-defined]
    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent]))
        )
        parent_run = client.read_flow_run(parent)
    assert [c.name for c in children] == ["rollback-subflow_check.db"]
    assert children[0].state is not None and children[0].state.is_completed()
    assert parent_run.state is not None and parent_run.state.is_failed()


def test_bad_parameter_is_one_clear_message(make_db, tmp_path: Path) -> None:
    db = make_db()
    before = snapshot(db)
    with pytest.raises(BadInput) as err:
        run(db, tmp_path, plan_check="sometimes")
    assert str(err.value) == (
        "Invalid parameter plan_check: Input should be 'fail' or 'warn'. "
        "Try: see 'liteshift run --help' for the accepted values"
    )
    assert snapshot(db) == before


def _flaky(real: Any, error: Exception, calls: list[int]) -> Any:
    def fn(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise error
        return real(*args, **kwargs)

    return step_task(fn, "validate")


def test_a_locked_database_is_retried(make_db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from liteshift.core.errors import DatabaseLocked
    from liteshift.tasks.validate import validate_database

    db = make_db()
    calls: list[int] = []
    monkeypatch.setattr(flow_mod, "validate", _flaky(validate_database, DatabaseLocked("locked"), calls))
    assert run(db, tmp_path)["status"] == "completed"
    assert len(calls) == 2


def test_a_failed_check_is_never_retried(make_db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from liteshift.tasks.validate import validate_database

    db = make_db()
    before = snapshot(db)
    calls: list[int] = []
    failure = CheckFailed("quick_check failed", "1 problem", "restore")
    monkeypatch.setattr(flow_mod, "validate", _flaky(validate_database, failure, calls))
    with pytest.raises(CheckFailed):
        run(db, tmp_path)
    assert len(calls) == 1
    assert snapshot(db) == before


def test_two_databases_of_the_same_name_keep_their_own_reports(tmp_path: Path) -> None:
    a, b = tmp_path / "tenants" / "a" / "app.db", tmp_path / "tenants" / "b" / "app.db"
    assert db_key(a) != db_key(b)
    assert db_key(a).startswith("app-db-") and db_key(b).startswith("app-db-")
    assert db_key(a) == db_key(tmp_path / "tenants" / "b" / ".." / "a" / "app.db")  # by resolved path


UNSERVED_QUERY = """[[query]]
name = "comment_lookup"
sql = "SELECT id FROM worklogs WHERE comment = 'no such comment'"
expect_index = "idx_worklogs_company"
"""


@pytest.mark.parametrize("mode", ["online", "blocking"])
def test_a_rebuild_shows_its_phases_and_a_failure_after_it_is_rolled_back_by_the_derived_down(
    make_db, tmp_path: Path, mode: str
) -> None:
    from helpers import ALL_MIGRATIONS, migrations_dir

    db = make_db()
    before = user_snapshot(db)
    summary = run(db, tmp_path, migrations_dir=str(ALL_MIGRATIONS), rebuild_mode=mode)
    assert summary["status"] == "completed"
    steps = [s["name"] for s in summary["steps"]]
    assert steps[2:5] == ["backup", "rebuild-copy", "migrate"]
    assert [(r["table"], r["mode"]) for r in summary["rebuilds"]] == [
        ("worklogs", mode),
        ("factorial_leaves", mode),
    ]
    worklogs = summary["rebuilds"][0]
    assert worklogs["rows"] == 2000 and worklogs["batches"] >= 1 and worklogs["cutover_seconds"] > 0
    if mode == "blocking":
        assert summary["free_after"] > 0  # the old copies' pages, reported apart from the growth
    else:  # the old copy is kept, fed, for the revert window
        assert [r["retained"] for r in summary["rebuilds"]] == [True, True]

    # A migration whose declared query no index serves fails after its commit: the rollback
    # subflow rebuilds the table back to the definition saved when it ran.
    db2 = make_db(name="second.db")
    before2 = user_snapshot(db2)
    d = migrations_dir(
        tmp_path,
        {
            "001_check.sql": "-- migrate:rebuild teams\nCREATE TABLE teams (id INTEGER PRIMARY KEY, "
            "company_id INTEGER NOT NULL REFERENCES companies(id), name TEXT NOT NULL CHECK (name != ''));\n",
            "001_check.toml": UNSERVED_QUERY,
        },
    )
    with pytest.raises(CheckFailed):
        run(db2, tmp_path, migrations_dir=str(d), rebuild_mode=mode)
    assert user_snapshot(db2) == before2 | {
        "schema:table:teams": user_snapshot(db2)["schema:table:teams"]
    }  # the same rows everywhere; the table's text differs only by SQLite's quoting of its name
    assert (
        user_snapshot(db2)["schema:table:teams"].split("(", 1)[1]
        == before2["schema:table:teams"].split("(", 1)[1]
    )
    assert tracked_versions(db2) == []
    assert before  # the first database is unchanged by the second run


@pytest.mark.parametrize("app_write", [None, "UPDATE teams SET name = 'APP' WHERE id = 1"])
def test_a_migration_only_the_backup_can_undo_is_restored_under_proof_or_refused(
    make_db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, app_write: str | None
) -> None:
    import sqlite3

    from helpers import migrations_dir

    db = make_db()
    before = user_snapshot(db)
    d = migrations_dir(
        tmp_path, {"001_fix.sql": "-- migrate:up\nUPDATE teams SET name = name || '!' WHERE id <= 2;\n"}
    )

    written: list[str] = []

    def write_then_fail(*args: Any, **kwargs: Any) -> Any:
        if app_write and not written:  # once, though the step is retried
            with sqlite3.connect(db) as con:  # the application, after the migration's commit
                con.execute(app_write)
            written.append(app_write)
        raise CheckFailed("Injected failure in integrity", "test", "none")

    monkeypatch.setattr(flow_mod, "integrity", step_task(write_then_fail, "integrity", retry=False))
    with pytest.raises(CheckFailed):
        run(db, tmp_path, migrations_dir=str(d))
    report = json.loads(next((tmp_path / "reports").glob("*.json")).read_text())
    text = next((tmp_path / "reports").glob("*.md")).read_text()
    if app_write is None:
        assert report["rollback"]["action"] == "restore"
        assert "- Path: restore from the backup under the write-ledger proof\n" in text
        assert user_snapshot(db) == before and tracked_versions(db) == []
    else:
        assert report["rollback"]["action"] == "refused"
        assert report["rollback"]["message"].startswith(
            "Refusing to restore the backup over newer writes: written or changed since the migration: "
            "teams (1 row write(s) since the migration)"
        )
        assert "- Path: refused: nothing was changed\n" in text
        assert tracked_versions(db) == ["001"]
