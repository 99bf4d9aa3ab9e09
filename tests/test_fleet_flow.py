"""The migrate-fleet flow's own rules that need no server: API calls retried on server errors."""

from __future__ import annotations

import httpx
import pytest

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
