"""The migrate-fleet flow's own rules: API calls retried on server errors (no server), and how a
resume adopts the runs a killed parent left (on the session's test server)."""

from __future__ import annotations

import json

import httpx
import pytest
from prefect import flow, get_client
from prefect.states import Paused, Scheduled, State

from liteshift.fleet import manifest, rollout
from liteshift.flows import fleet as fleet_flow


def _failing(times: int, exc: Exception) -> object:
    calls = []

    def call(value: str) -> str:
        calls.append(value)
        if len(calls) <= times:
            raise exc
        return value

    call.calls = calls  # type: ignore[attr-defined]
    return call


def test_a_lost_connection_is_retried_until_the_server_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fleet_flow.time, "sleep", lambda s: None)
    call = _failing(3, httpx.ConnectError("connection refused"))
    assert fleet_flow._api(call, "ok") == "ok"
    assert call.calls == ["ok"] * 4  # type: ignore[attr-defined]


def test_a_server_away_for_every_retry_halts_the_fleet_with_how_to_resume(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fleet_flow.time, "sleep", lambda s: None)
    call = _failing(99, httpx.ConnectError("connection refused"))
    with pytest.raises(fleet_flow.FleetHalted) as err:
        fleet_flow._api(call, "x")
    assert str(err.value) == (
        "The Prefect server did not answer the fleet: ConnectError: connection refused; the runs already "
        "started go on. Try: when the server is healthy again, run the same command: the fleet resumes "
        "and adopts them"
    )
    assert len(call.calls) == fleet_flow.API_RETRIES + 1  # type: ignore[attr-defined]


def test_a_client_error_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.exceptions import PrefectHTTPStatusError

    request = httpx.Request("POST", "http://127.0.0.1/api/deployments/x/create_flow_run")
    response = httpx.Response(422, request=request, text="bad parameters")
    exc = PrefectHTTPStatusError.from_httpx_error(
        httpx.HTTPStatusError("422", request=request, response=response)
    )
    call = _failing(99, exc)
    with pytest.raises(fleet_flow.FleetHalted):
        fleet_flow._api(call, "x")
    assert len(call.calls) == 1  # type: ignore[attr-defined]


@flow(name="fleet-child-stand-in")
def _stand_in() -> None:
    """Only its runs are created (never started): the fleet adopts them by their tags."""


def _adopted(fleet_id: str, state: State) -> fleet_flow.Child:
    """One database's child run made as a killed parent left it, then adopted by a resume."""
    target = manifest.Target(
        key=f"a:/srv/{fleet_id}.db", host="a", path=f"/srv/{fleet_id}.db", queue="liteshift-a"
    )
    plan = rollout.make_plan(fleet_id, [target], canary=0)
    with get_client(sync_client=True) as client:
        client.create_flow_run(
            _stand_in, tags=[f"fleet-{fleet_id}", fleet_flow.database_tag(target.key)], state=state
        )
    return fleet_flow.adopt(plan)[target.key]


@pytest.mark.usefixtures("prefect_harness")
def test_an_adopted_scheduled_run_waits_its_timeout_from_its_creation_not_from_zero() -> None:
    child = _adopted("adopt-scheduled", Scheduled())
    assert child.outcome == "pending" and child.attempts == 1
    assert child.run is not None and child.run.created is not None
    created = child.run.created.timestamp()
    assert child.started == created
    assert not fleet_flow.overdue(child, 1800.0, now=created + 60)
    assert fleet_flow.overdue(child, 1800.0, now=created + 1801)


@pytest.mark.usefixtures("prefect_harness")
def test_a_paused_child_waits_for_a_person_and_is_never_cancelled_as_unreached() -> None:
    child = _adopted("adopt-paused", Paused())
    assert child.outcome == "pending"
    assert child.run is not None and child.run.created is not None
    assert not fleet_flow.not_started(child)
    assert not fleet_flow.overdue(child, 1800.0, now=child.run.created.timestamp() + 10_000)


def test_status_shows_each_database_state_and_why_it_is_not_migrated() -> None:
    targets = [
        manifest.Target(key=f"{h}:/srv/{h}.db", host=h, path=f"/srv/{h}.db", queue=f"liteshift-{h}")
        for h in "ab"
    ]
    plan = rollout.make_plan("status-shown", targets, canary=1)
    children = {t.key: fleet_flow.Child(t, plan.wave_of(t.key)) for t in targets}
    canary, other = plan.canary[0], next(k for k in children if k not in plan.canary)
    children[canary].outcome, children[canary].attempts = "completed", 1
    refused = children[other]
    refused.outcome, refused.attempts = "refused", 1
    refused.error = "BadInput: Database /srv/b.db is not a SQLite database:\n  file is not a database"
    text = fleet_flow.describe(plan, children, as_json=False).splitlines()
    assert text[2:] == [
        f"  canary   completed  {canary}",
        f"  wave 1   refused    {other}",
        "           BadInput: Database /srv/b.db is not a SQLite database: file is not a database",
    ]
    rows = json.loads(fleet_flow.describe(plan, children, as_json=True))["databases"]
    assert [(r["database"], r["state"], r["error"]) for r in rows] == [
        (canary, "completed", ""),
        (other, "refused", refused.error),
    ]


def _fleet(tmp_path, names: list[str]):  # type: ignore[no-untyped-def]
    (tmp_path / "dbs").mkdir(exist_ok=True)
    for name in names:
        (tmp_path / "dbs" / name).write_bytes(b"")
    spec = tmp_path / "fleet.toml"
    spec.write_text('[hosts.db-1]\npaths = ["dbs/*.db"]\n')
    return spec


def _load(spec, tmp_path, **kw):  # type: ignore[no-untyped-def]
    return fleet_flow.load_or_make_plan(
        spec, "f1", None, 1, "100%", None, None, str(tmp_path / "plans"), **kw
    )


def test_a_resume_whose_manifest_yields_other_databases_is_refused_naming_them(tmp_path) -> None:
    spec = _fleet(tmp_path, ["a.db", "b.db"])
    first = _load(spec, tmp_path)
    kept = (tmp_path / "plans" / "fleet-f1.json").read_text()
    (tmp_path / "dbs" / "b.db").unlink()
    _fleet(tmp_path, ["c.db", "d.db"])  # the globs now match other files
    with pytest.raises(rollout.PlanInvalid) as err:
        _load(spec, tmp_path)
    dbs = tmp_path / "dbs"
    assert err.value.what == "Fleet f1 was planned for other databases"
    assert err.value.why == (
        f"{spec} now yields 2 the plan does not have (db-1:{dbs / 'c.db'}, db-1:{dbs / 'd.db'}) and "
        f"not 1 it has (db-1:{dbs / 'b.db'}); a resume only finishes the plan of {first.created_at}"
    )
    assert err.value.hint == (
        "start a new fleet with another --fleet-id, or plan fleet f1 again over what the manifest "
        "yields now with --replan (databases it already migrated are not migrated twice)"
    )
    assert err.value.exit_code == 2
    assert (tmp_path / "plans" / "fleet-f1.json").read_text() == kept  # nothing changed


def test_a_resume_over_the_same_databases_keeps_its_plan_and_replan_replaces_it(tmp_path) -> None:
    spec = _fleet(tmp_path, ["a.db", "b.db"])
    first = _load(spec, tmp_path)
    assert _load(spec, tmp_path) == first
    _fleet(tmp_path, ["c.db"])
    assert _load(spec, tmp_path, look_only=True) == first  # the status of the kept plan
    again = _load(spec, tmp_path, replan=True)
    assert sorted(t.key.rsplit("/", 1)[1] for t in again.targets) == ["a.db", "b.db", "c.db"]
    assert rollout.read_plan(tmp_path / "plans", "f1") == again
    assert _load(spec, tmp_path) == again  # and it is what a resume now keeps


def test_the_fleet_command_refuses_such_a_resume_before_anything_starts(tmp_path, capsys) -> None:
    from liteshift.cli import main

    spec = _fleet(tmp_path, ["a.db"])
    plans = str(tmp_path / "plans")
    assert main(["fleet", "plan", "--manifest", str(spec), "--fleet-id", "f1", "--plan-dir", plans]) == 0
    _fleet(tmp_path, ["z.db"])
    code = main(["fleet", "run", "--manifest", str(spec), "--fleet-id", "f1", "--plan-dir", plans])
    assert code == 2
    assert "Error: Fleet f1 was planned for other databases" in capsys.readouterr().err
