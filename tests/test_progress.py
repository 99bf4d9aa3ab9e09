"""Progress of long phases: the line, the terminal meter, and what each command shows of it."""

from __future__ import annotations

import io
import json
import re
import sqlite3
import sys
from pathlib import Path

import pytest
from helpers import migrations_dir

from liteshift.core import progress
from liteshift.core.migrations import Rebuild
from liteshift.core.progress import Meter, Tick, line
from liteshift.core.throttle import Throttle
from liteshift.rebuild import online


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_line_says_phase_done_of_total_rate_time_left_and_wal() -> None:
    tick = Tick("copy worklogs", 250_000, 1_000_000)
    assert line(tick, 100.0, 50_000, 110.0, 12_500_000) == (
        "copy worklogs: 250,000 of 1,000,000 rows (25%), 20,000 rows/s, 0m37s left, WAL 12.5 MB"
    )
    # The first second shows no rate (too few rows to tell); bytes carry their own unit.
    assert line(Tick("backup", 2_000, 8_000_000, "bytes"), 0.0, 0, 0.5) == "backup: 2.0 KB of 8.0 MB (0%)"
    assert line(Tick("migrate", 13, 13, "statements"), 0.0, 0, 2.0) == (
        "migrate: 13 of 13 statements (100%), 6 statements/s"
    )
    assert line(Tick("copy t", 7_200_000, 18_000_000), 0.0, 0, 3600.0) == (
        "copy t: 7,200,000 of 18,000,000 rows (40%), 2,000 rows/s, 1h30m left"
    )


def test_plain_lines_at_a_phase_start_every_ten_seconds_and_its_end() -> None:
    out, clock = io.StringIO(), Clock()
    meter = Meter(out, tty=False, clock=clock)
    for done, at in ((0, 100.0), (10, 101.0), (20, 109.0), (30, 110.5), (40, 111.0)):
        clock.now = at
        meter.update(Tick("copy t", done, 50))
        meter.draw()
    # Two phases told between two draws: the end of the first is still shown.
    meter.update(Tick("copy t", 50, 50))
    meter.update(Tick("verify t", 10, 50))
    meter.update(Tick("verify t", 20, 50))
    clock.now = 112.0
    meter.draw()
    assert out.getvalue().splitlines() == [
        "copy t: 0 of 50 rows (0%)",
        "copy t: 30 of 50 rows (60%), 3 rows/s, 0m07s left",
        "copy t: 50 of 50 rows (100%), 4 rows/s",
        "verify t: 20 of 50 rows (40%)",
    ]


def test_on_a_terminal_one_line_is_rewritten_and_other_output_starts_a_new_one() -> None:
    out, clock = Tty(), Clock()
    meter = Meter(out, tty=True, clock=clock)
    meter.update(Tick("copy t", 10, 50))
    meter.draw()
    meter.update(Tick("copy t", 5, 50))  # a shorter line blanks the rest of the longer one
    meter.draw()
    meter.interrupt()
    out.write("Warning: something\n")
    meter.update(Tick("copy t", 50, 50))
    meter.draw()
    assert out.getvalue() == (
        "\rcopy t: 10 of 50 rows (20%)\rcopy t: 5 of 50 rows (10%) \nWarning: something\n"
        "\rcopy t: 50 of 50 rows (100%)\n"
    )


def test_a_step_telling_progress_never_waits_for_the_terminal() -> None:
    class Stuck(io.StringIO):
        def write(self, text: str) -> int:
            raise AssertionError("the caller's thread drew")

    meter = Meter(Stuck(), tty=False)
    progress._meter = meter  # what show_on installs, without its thread
    try:
        seen: list[Tick] = []
        progress.tell(seen.append, Tick("copy t", 1, 2))
    finally:
        progress._meter = None
    assert seen == [Tick("copy t", 1, 2)] and meter._pending == [Tick("copy t", 1, 2)]


def test_show_on_a_terminal_guards_stdout_and_hide_puts_it_back(monkeypatch: pytest.MonkeyPatch) -> None:
    tty, stdout, stderr = Tty(), io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", stdout)
    monkeypatch.setattr(sys, "stderr", stderr)
    meter = progress.show_on(tty)
    try:
        progress.tell(None, Tick("copy t", 5, 50))
        meter.draw()
        print("a result")
    finally:
        progress.hide()
    assert sys.stdout is stdout and sys.stderr is stderr and progress._meter is None
    assert tty.getvalue() == "\rcopy t: 5 of 50 rows (10%)\n" and stdout.getvalue() == "a result\n"


def _table_db(path: Path, rows: int) -> Path:
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    con.executemany("INSERT INTO t VALUES (?, ?)", ((i, f"v{i}") for i in range(1, rows + 1)))
    con.close()
    return path


def test_an_online_copy_tells_copy_and_verify_and_checks_once(tmp_path: Path) -> None:
    db = _table_db(tmp_path / "p.db", 5000)
    spec = Rebuild("t", "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    seen: list[Tick] = []
    con = sqlite3.connect(db, isolation_level=None)
    state = online.start_online(con, spec, "001", str(db), 5000)
    # The flow's copy step: the copy told batch by batch, no check.
    first = online.copy_online(con, state, str(db), 5000, Throttle(rows=1000), seen.append, check=False)
    assert first.verified_rows == 0 and {t.phase for t in seen} == {"copy t"}
    copied = [t.done for t in seen]
    assert (
        copied == sorted(copied)
        and copied[0] == 0
        and copied[-1] == 5000
        and len(copied) == first.batches + 1
    )
    # The migrate step resumes it: nothing more to copy (nothing told of it), checked once.
    again = online.start_online(con, spec, "001", str(db), 5000)
    seen.clear()
    assert online.copy_online(con, again, str(db), 5000, None, seen.append).verified_rows == 5000
    assert {t.phase for t in seen} == {"verify t"} and (seen[-1].done, seen[-1].total) == (5000, 5000)
    online.abandon_online(con, "t", str(db), 5000)
    con.close()


def test_run_shows_progress_on_stderr_and_keeps_stdout_one_json_object(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], prefect_harness: None
) -> None:
    from liteshift.cli import main

    db = _table_db(tmp_path / "p.db", 3000)
    d = migrations_dir(
        tmp_path,
        {"001_v.sql": "-- migrate:rebuild t\nCREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL);\n"},
    )
    args = ["--database", str(db), "--migrations", str(d), "--json"]
    assert main(["run", *args, "--rebuild-mode", "online", "--report-dir", str(tmp_path / "r")]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["status"] == "completed"
    lines = captured.err.splitlines()  # not a terminal: plain lines
    assert any(re.fullmatch(r"backup: [\d.]+ KB of [\d.]+ KB \(100%\)(, .*)?", x) for x in lines), lines
    for phase in ("copy t", "verify t"):
        assert any(x.startswith(f"{phase}: 3,000 of 3,000 rows (100%)") for x in lines), lines
    assert any(x.startswith("migrate: 1 of 1 statements (100%)") for x in lines), lines
    # The old copy kept for the revert window is emptied by `rollback --finish`, not shown here.
    assert main(["rollback", "--finish", *args]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert any(
        re.match(r"drop old copy liteshift_old_\w+: 3,000 of 3,000 rows \(100%\)", x) for x in lines
    ), lines
