"""Maintenance windows: "Sun 01:00-05:00 Europe/Berlin" parsed, checked, and enforced before a write.

A window names its days (Mon..Sun, a range Mon-Fri, a list Sat,Sun, or "daily"), a start and an
end time, and a time zone. An end at or before the start crosses midnight: "Sat 23:00-02:00" runs
from Saturday 23:00 to Sunday 02:00, and is named by the day it opens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import ClassVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from liteshift.core.errors import BadInput, ErrorOutcome

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
WINDOW_RE = re.compile(
    r"^\s*(?P<days>[A-Za-z,\-]+)\s+(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})\s+(?P<tz>\S+)\s*$"
)
EXAMPLE = "Sun 01:00-05:00 Europe/Berlin"


class WindowInvalid(BadInput):
    """The maintenance_window text cannot be parsed."""


class OutsideWindow(BadInput):
    """The run started outside its maintenance window; nothing was written."""

    outcome: ClassVar[ErrorOutcome] = "deferred"


@dataclass(frozen=True)
class Window:
    """Days of the week (0 = Monday) on which the window opens, its times, and its time zone."""

    text: str
    days: frozenset[int]
    start: time
    end: time
    tz: ZoneInfo

    def opening(self, now: datetime) -> datetime | None:
        """The local start of the window that contains now, or None when now is outside."""
        local = now.astimezone(self.tz)
        for back in (0, 1):  # a window that crosses midnight may have opened yesterday
            day = local.date() - timedelta(days=back)
            opens = datetime.combine(day, self.start, self.tz)
            if day.weekday() in self.days and opens <= local < opens + self.length:
                return opens
        return None

    @property
    def length(self) -> timedelta:
        """How long the window stays open (crossing midnight when end <= start)."""
        start = timedelta(hours=self.start.hour, minutes=self.start.minute)
        end = timedelta(hours=self.end.hour, minutes=self.end.minute)
        return end - start if end > start else end - start + timedelta(days=1)

    def next_opening(self, now: datetime) -> datetime:
        """The local start of the next window after now."""
        local = now.astimezone(self.tz)
        for ahead in range(8):
            day = local.date() + timedelta(days=ahead)
            opens = datetime.combine(day, self.start, self.tz)
            if day.weekday() in self.days and opens > local:
                return opens
        raise AssertionError("a window opens at least once a week")  # days is never empty


def _bad(text: str, why: str) -> WindowInvalid:
    return WindowInvalid(
        f"Invalid maintenance_window {text!r}",
        why,
        f"write it as DAYS HH:MM-HH:MM TIMEZONE, for example {EXAMPLE!r} or 'Mon-Fri 22:00-02:00 UTC'",
    )


def _parse_days(spec: str, text: str) -> frozenset[int]:
    if spec.lower() in ("daily", "*"):
        return frozenset(range(7))
    days: set[int] = set()
    for part in spec.lower().split(","):
        ends = part.split("-")
        if len(ends) > 2 or any(e[:3] not in DAYS or len(e) < 3 for e in ends):
            raise _bad(text, f"{part!r} is not a day name (Mon..Sun), a range Mon-Fri, or 'daily'")
        first, last = DAYS.index(ends[0][:3]), DAYS.index(ends[-1][:3])
        days.update((first + i) % 7 for i in range((last - first) % 7 + 1))
    return frozenset(days)


def _parse_time(value: str, text: str) -> time:
    hours, minutes = (int(v) for v in value.split(":"))
    if hours > 23 or minutes > 59:
        raise _bad(text, f"{value} is not a time of day (00:00 to 23:59)")
    return time(hours, minutes)


def parse_window(text: str) -> Window:
    """Parse "DAYS HH:MM-HH:MM TIMEZONE", or raise WindowInvalid saying what is wrong."""
    m = WINDOW_RE.match(text)
    if not m:
        raise _bad(text, "it does not read as DAYS HH:MM-HH:MM TIMEZONE")
    try:
        tz = ZoneInfo(m.group("tz"))
    except (ZoneInfoNotFoundError, ValueError):
        raise _bad(text, f"{m.group('tz')!r} is not an IANA time zone") from None
    start, end = _parse_time(m.group("start"), text), _parse_time(m.group("end"), text)
    if start == end:
        raise _bad(text, "the window starts and ends at the same time")
    return Window(text.strip(), _parse_days(m.group("days"), text), start, end, tz)


def enforce_window(text: str | None, now: datetime | None = None) -> str:
    """Refuse with OutsideWindow when now is outside the window; describe the window otherwise."""
    if not text:
        return "no maintenance window configured"
    closes = closing(text, now)
    return f"inside {text.strip()!r} (closes {closes:%a %H:%M %Z})"


def closing(text: str, now: datetime | None = None) -> datetime:
    """When the window that contains now closes; OutsideWindow when now is outside it."""
    return _closing(parse_window(text), now or datetime.now(UTC))


def _closing(window: Window, moment: datetime) -> datetime:
    opened = window.opening(moment)
    if opened is None:
        nxt = window.next_opening(moment)
        local = moment.astimezone(window.tz)
        raise OutsideWindow(
            f"Outside the maintenance window {window.text!r}",
            f"it is {local:%a %Y-%m-%d %H:%M %Z} there; nothing was written",
            f"run again when the window opens ({nxt:%a %Y-%m-%d %H:%M %Z}), "
            "or start it without maintenance_window",
        )
    return opened + window.length


class WindowTooShort(BadInput):
    """The run would outlast its maintenance window; nothing was written."""

    outcome: ClassVar[ErrorOutcome] = "deferred"


def check_fits(text: str | None, predicted_s: float | None, basis: str, now: datetime | None = None) -> str:
    """Refuse with WindowTooShort when a run predicted to take predicted_s would end after the
    window closes; say what the prediction was based on otherwise."""
    if not text or predicted_s is None:
        return "no maintenance window configured" if not text else f"no prediction ({basis})"
    window = parse_window(text)
    moment = now or datetime.now(UTC)
    closes = _closing(window, moment)
    left = (closes - moment).total_seconds()
    if predicted_s > left:
        raise WindowTooShort(
            f"The run would outlast the maintenance window {window.text!r}",
            f"it is predicted to take {predicted_s:.1f} s ({basis}) and the window closes in "
            f"{left:.1f} s ({closes:%a %H:%M %Z}); nothing was written",
            f"run again when the window opens ({window.next_opening(closes):%a %Y-%m-%d %H:%M %Z}), "
            "or widen the window",
        )
    return f"predicted {predicted_s:.1f} s ({basis}); {left:.0f} s left in the window"
