"""Maintenance windows: parsing, membership across midnight and DST, and the refusal message."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from liteshift.core.window import (
    OutsideWindow,
    WindowInvalid,
    WindowTooShort,
    check_fits,
    enforce_window,
    parse_window,
)

BERLIN = ZoneInfo("Europe/Berlin")


def at(text: str, tz: ZoneInfo = BERLIN) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=tz)


@pytest.mark.parametrize(
    ("moment", "inside"),
    [
        ("2026-11-29 01:00", True),  # Sunday, the opening minute
        ("2026-11-29 04:59", True),
        ("2026-11-29 05:00", False),  # the end is exclusive
        ("2026-11-29 00:59", False),
        ("2026-11-28 02:00", False),  # Saturday
    ],
)
def test_sunday_window_membership(moment, inside):
    assert (parse_window("Sun 01:00-05:00 Europe/Berlin").opening(at(moment)) is not None) is inside


def test_window_is_checked_in_its_own_time_zone():
    # 00:30 UTC on Sunday 29 November is 01:30 in Berlin (CET, UTC+1): inside.
    assert parse_window("Sun 01:00-05:00 Europe/Berlin").opening(at("2026-11-29 00:30", UTC)) is not None


def test_window_crossing_midnight_belongs_to_the_day_it_opens():
    w = parse_window("Sat 23:00-02:00 UTC")
    assert w.opening(at("2026-11-29 01:30", UTC)) == at("2026-11-28 23:00", UTC)
    assert w.opening(at("2026-11-30 01:30", UTC)) is None  # Sunday night is not Saturday night


def test_day_ranges_lists_and_daily():
    assert parse_window("Mon-Fri 22:00-23:00 UTC").days == frozenset(range(5))
    assert parse_window("Fri-Mon 22:00-23:00 UTC").days == frozenset({4, 5, 6, 0})
    assert parse_window("sat,sun 10:00-11:00 UTC").days == frozenset({5, 6})
    assert parse_window("daily 10:00-11:00 UTC").days == frozenset(range(7))


def test_outside_window_refuses_with_exact_message():
    with pytest.raises(OutsideWindow) as err:
        enforce_window("Sun 01:00-05:00 Europe/Berlin", at("2026-11-25 22:10", UTC))
    assert str(err.value) == (
        "Outside the maintenance window 'Sun 01:00-05:00 Europe/Berlin': it is Wed 2026-11-25 23:10 CET "
        "there; nothing was written. Try: run again when the window opens (Sun 2026-11-29 01:00 CET), "
        "or start it without maintenance_window"
    )
    assert err.value.exit_code == 2


def test_inside_window_says_when_it_closes():
    got = enforce_window("Sun 01:00-05:00 Europe/Berlin", at("2026-11-29 02:00"))
    assert got == "inside 'Sun 01:00-05:00 Europe/Berlin' (closes Sun 05:00 CET)"
    assert enforce_window(None) == "no maintenance window configured"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("Sunday at two", "it does not read as DAYS HH:MM-HH:MM TIMEZONE"),
        ("Sun 01:00-05:00 Mars/Olympus", "'Mars/Olympus' is not an IANA time zone"),
        ("Sun 25:00-05:00 UTC", "25:00 is not a time of day (00:00 to 23:59)"),
        ("Funday 01:00-05:00 UTC", "'funday' is not a day name (Mon..Sun), a range Mon-Fri, or 'daily'"),
        ("Sun 01:00-01:00 UTC", "the window starts and ends at the same time"),
    ],
)
def test_invalid_windows_say_why(text, why):
    with pytest.raises(WindowInvalid) as err:
        parse_window(text)
    assert err.value.what == f"Invalid maintenance_window {text!r}"
    assert err.value.why == why


def test_a_run_predicted_past_the_window_end_is_refused_with_both_figures():
    with pytest.raises(WindowTooShort) as info:
        check_fits("Sun 01:00-05:00 Europe/Berlin", 120.0, "median of 3 earlier runs", at("2026-11-29 04:59"))
    assert str(info.value) == (
        "The run would outlast the maintenance window 'Sun 01:00-05:00 Europe/Berlin': it is predicted "
        "to take 120.0 s (median of 3 earlier runs) and the window closes in 60.0 s (Sun 05:00 CET); "
        "nothing was written. Try: run again when the window opens (Sun 2026-12-06 01:00 CET), "
        "or widen the window"
    )


def test_a_run_that_fits_says_its_prediction():
    got = check_fits("Sun 01:00-05:00 Europe/Berlin", 50.0, "rehearsal on a copy", at("2026-11-29 04:59"))
    assert got == "predicted 50.0 s (rehearsal on a copy); 60 s left in the window"
    assert check_fits(None, 50.0, "x") == "no maintenance window configured"
    assert (
        check_fits("Sun 01:00-05:00 Europe/Berlin", None, "no earlier run")
        == "no prediction (no earlier run)"
    )
    with pytest.raises(OutsideWindow):
        check_fits("Sun 01:00-05:00 Europe/Berlin", 1.0, "x", at("2026-11-29 05:00"))
