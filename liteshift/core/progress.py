"""Progress of a long phase: what a step tells, and the line a terminal shows of it.

A step that runs long (the backup's copy, an online copy and its check, emptying an old table, an
archive pass) tells each advance as a `Tick` through `tell`. That goes to the step's own callback
(a Prefect progress artifact, when a flow passed one) and to the process's `Meter`, when a command
runs on a terminal. Telling never waits on either: the artifact is posted from a thread, and the
meter only keeps the latest tick for its own thread to draw. A step may tell while it holds the
write lock, and a slow or paused terminal must not lengthen that.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO, cast


@dataclass(frozen=True)
class Tick:
    """How far one phase is: `done` of `total` units, in the database at `database`."""

    phase: str  # "backup", "copy worklogs", "verify worklogs", "drop old worklogs", ...
    done: int
    total: int
    unit: str = "rows"
    database: str = ""  # its -wal file's size goes on the line

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total > 0 else 1.0


Progress = Callable[[Tick], None]

_meter: Meter | None = None


def tell(on_progress: Progress | None, tick: Tick) -> None:
    """Tell the step's callback and the terminal's meter, if any, how far the phase is."""
    if on_progress is not None:
        on_progress(tick)
    if _meter is not None:
        _meter.update(tick)


def wal_bytes(database: str) -> int:
    """The size of the database's -wal file (0 without one)."""
    try:
        return os.stat(f"{database}-wal").st_size
    except OSError:
        return 0


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _count(n: float, unit: str) -> str:
    return _size(n) if unit == "bytes" else f"{n:,.0f}"


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


@dataclass
class _Phase:
    name: str
    started: float
    first: int  # units done when the phase was first seen (a resumed copy starts part way)


def line(tick: Tick, phase_started: float, first_done: int, now: float, wal: int | None = None) -> str:
    """One progress line: phase, done of total, rate, time left, and the WAL's size."""
    elapsed = now - phase_started
    rate = (tick.done - first_done) / elapsed if elapsed > 0 else 0.0
    of = f"{_count(tick.done, tick.unit)} of {_count(tick.total, tick.unit)}"
    parts = [f"{tick.phase}: {of}" + ("" if tick.unit == "bytes" else f" {tick.unit}")]
    parts[0] += f" ({tick.fraction:.0%})"
    if elapsed >= 1 and rate > 0:
        parts.append(f"{_count(rate, tick.unit)}{'' if tick.unit == 'bytes' else ' ' + tick.unit}/s")
        if tick.done < tick.total:
            parts.append(f"{_duration((tick.total - tick.done) / rate)} left")
    if wal is not None:
        parts.append(f"WAL {_size(wal)}")
    return ", ".join(parts)


@dataclass
class Meter:
    """Draws the latest tick on a stream: one rewritten line on a terminal, else a plain line
    when a phase starts, at most every `plain_every_s` while it runs, and when it ends."""

    stream: TextIO
    tty: bool
    redraw_s: float = 0.25
    plain_every_s: float = 10.0
    clock: Callable[[], float] = time.monotonic
    _pending: list[Tick] = field(default_factory=list)
    _phase: _Phase | None = None
    _last_plain: float = 0.0
    _width: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _drawing: threading.RLock = field(default_factory=threading.RLock)
    _wake: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def update(self, tick: Tick) -> None:
        with self._lock:  # the latest tick of each phase: a phase's start and end are never lost
            if self._pending and self._pending[-1].phase == tick.phase:
                self._pending[-1] = tick
            else:
                self._pending.append(tick)
        self._wake.set()

    def draw(self) -> None:
        """Draw the ticks told since the last call (the meter's thread calls this)."""
        with self._lock:
            ticks, self._pending = self._pending, []
        with self._drawing:
            for tick in ticks:
                self._draw(tick)

    def interrupt(self) -> None:
        """End the line being drawn, so that other output starts on a line of its own."""
        with self._drawing:
            self._end_line()

    def _draw(self, tick: Tick) -> None:
        now = self.clock()
        if self._phase is None or self._phase.name != tick.phase:
            self._end_line()
            self._phase = _Phase(tick.phase, now, tick.done)
            self._last_plain = -1e9
        wal = wal_bytes(tick.database) if tick.database else None
        text = line(tick, self._phase.started, self._phase.first, now, wal)
        finished = tick.done >= tick.total
        if self.tty:
            pad = max(0, self._width - len(text))
            self.stream.write("\r" + text + " " * pad)
            self._width = len(text)
            if finished:
                self._end_line()
        elif finished or now - self._last_plain >= self.plain_every_s:
            self.stream.write(text + "\n")
            self._last_plain = now
        self.stream.flush()

    def _end_line(self) -> None:
        if self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()
        self._width = 0

    def start(self) -> None:
        def run() -> None:
            while not self._stop.is_set():
                self._wake.wait()
                self._wake.clear()
                try:
                    self.draw()
                except (OSError, ValueError):  # a closed or broken stream: progress is not worth failing over
                    return
                self._stop.wait(self.redraw_s)

        self._thread = threading.Thread(target=run, name="liteshift-meter", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        try:
            self.draw()
            self._end_line()
        except (OSError, ValueError):
            pass


class _Guarded:
    """sys.stdout or sys.stderr while a terminal line is drawn: ends that line before writing."""

    def __init__(self, stream: TextIO, meter: Meter) -> None:
        self._stream, self._meter = stream, meter

    def write(self, text: str) -> int:
        if text:
            self._meter.interrupt()
        return self._stream.write(text)

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)


_streams: tuple[TextIO, TextIO] | None = None


def show_on(stream: TextIO) -> Meter:
    """Draw every tick of this process on `stream` until `hide` (the command line calls this).

    On a terminal, the process's other output (results, errors, Prefect's log lines) first ends
    the line being drawn.
    """
    global _meter, _streams
    meter = Meter(stream, tty=stream.isatty())
    if meter.tty:
        _streams = (sys.stdout, sys.stderr)
        sys.stdout = cast(TextIO, _Guarded(sys.stdout, meter))
        sys.stderr = cast(TextIO, _Guarded(sys.stderr, meter))
    meter.start()
    _meter = meter
    return meter


def hide() -> None:
    """Draw what is left, end the line, and stop drawing."""
    global _meter, _streams
    meter, _meter = _meter, None
    if meter is not None:
        meter.stop()
    if _streams is not None:
        sys.stdout, sys.stderr = _streams
        _streams = None
