"""The rollback: the downs in one transaction, or a restore from the backup that loses nothing.

A migration is undone, in this order of preference, by its down section, by the down derived when
it was applied (liteshift.migrate.inverse), or by putting back from the backup what it changed, under the
write lock and only when the write ledger proves no write reached those tables since
(liteshift.migrate.restore). Whatever cannot be proven is refused, and nothing is changed.
"""

from __future__ import annotations

import json
import shlex
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from liteshift.core import faults
from liteshift.core.db import attach_immutable, begin_immediate, connection, pragma_check, table_exists
from liteshift.core.errors import CheckFailed, MigrationError, RollbackRefused
from liteshift.core.migrations import DROP_INDEX_RE, Migration, Rebuild, Step, load_migrations
from liteshift.core.sql import failure_detail, quote_ident, unquote
from liteshift.core.tables import read_table
from liteshift.core.tracking import TRACKING_TABLE, TrackingRow, read_tracking
from liteshift.migrate import inverse, ledger, restore
from liteshift.rebuild import blocking, foreign_keys, online, schema
from liteshift.rebuild.constraints import find_violations
from liteshift.tasks.backup import PARTIAL_SUFFIX


class DownFailed(RollbackRefused):
    """A down statement failed; its transaction was rolled back, so nothing was undone."""


Action = Literal["nothing", "down", "derived-down", "restore", "refused"]
PATHS = {
    "nothing": "nothing to undo",
    "down": "the migration's down section",
    "derived-down": "the derived down (every write since is kept)",
    "restore": "restore from the backup under the write-ledger proof",
    "refused": "refused: nothing was changed",
}


@dataclass
class Rollback:
    """What the rollback did (which path, and why) and what it verified afterwards."""

    action: Action
    undone: list[str]
    message: str
    verified: list[str] = field(default_factory=list)
    lock_seconds: float = 0.0  # the write lock held by the downs, or by the proof and the restore
    proof_seconds: float = 0.0  # of which the proof's check (restore only)
    scan_seconds: float = 0.0  # before the lock: finding the rows that differ from the backup

    @property
    def path(self) -> str:
        """Which way the rollback went, in words, for the report and the UI."""
        return PATHS[self.action]


def rollback_database(
    database: Path,
    migrations_dir: Path,
    versions: list[str] | None = None,
    backup_path: str | None = None,
    busy_timeout_ms: int = 5000,
    rebuild_mode: str = "auto",
) -> Rollback:
    """Undo the given versions (default: the last applied batch), then verify the result.

    rebuild_mode: how a rebuild back runs, as a migration's rebuilds do (auto: online from
    config.ONLINE_MIN_ROWS rows when each row keeps its key).
    """
    migrations = {m.version: m for m in load_migrations(migrations_dir)}
    with connection(database, busy_timeout_ms) as con, foreign_keys.foreign_keys_off(con):
        if not _targets(con, versions):  # a read: no write lock needed to know there is nothing
            online.end_revert_windows(con, str(database), busy_timeout_ms)
            return Rollback("nothing", [], "the migration never committed: nothing to undo")
        # An online rebuild back copies its rows now, outside the write lock; the downs'
        # transaction then only drains what the application changed meanwhile and swaps.
        shadows: Online = {}
        try:
            _copy_backs_online(con, database, versions, migrations, busy_timeout_ms, rebuild_mode, shadows)
            undone = _undo(
                con, database, migrations_dir, migrations, versions, backup_path, busy_timeout_ms, shadows
            )
        except BaseException:
            _abandon_backs(con, database, shadows, busy_timeout_ms)
            raise
        if undone is None:
            _abandon_backs(con, database, shadows, busy_timeout_ms)
            online.end_revert_windows(con, str(database), busy_timeout_ms)
            return Rollback("nothing", [], "the migration never committed: nothing to undo")
        result, todo, plans = undone
        if result.action == "restore":
            _abandon_backs(con, database, shadows, busy_timeout_ms)
        else:  # the tables the online cut-overs left, emptied in short transactions
            online.drop_old_tables(con, str(database), busy_timeout_ms)
    result.verified = _verify(database, todo, _kept_indexes(todo, plans), busy_timeout_ms)
    faults.point("rollback-verified")
    return result


Plans = dict[str, list[Step] | None]
Online = dict[tuple[str, str], online.Online]


def _undo(
    con: sqlite3.Connection,
    database: Path,
    migrations_dir: Path,
    migrations: dict[str, Migration],
    versions: list[str] | None,
    backup_path: str | None,
    busy_timeout_ms: int,
    shadows: Online,
) -> tuple[Rollback, list[Migration], Plans] | None:
    """Under the write lock: the downs in one transaction, else the restore; None: nothing to undo."""
    begin_immediate(con, database, busy_timeout_ms)
    locked = time.perf_counter()
    rows = _targets(con, versions)
    if not rows:
        con.execute("ROLLBACK")
        return None
    missing = [r.version for r in rows if r.version not in migrations]
    if missing:
        con.execute("ROLLBACK")
        raise RollbackRefused(
            f"Migration file(s) for version {', '.join(missing)} not found",
            f"looked in {migrations_dir}",
            "pass --migrations pointing at the directory they came from",
        )
    todo = [migrations[r.version] for r in rows]
    faults.point("rollback-start")
    plans = {r.version: _down_steps(migrations[r.version], r) for r in rows}
    if all(p is not None for p in plans.values()):
        try:
            _run_downs(con, todo, plans, shadows)
        except DownFailed as exc:
            return _restore_after(exc, database, rows, backup_path, busy_timeout_ms), todo, plans
        faults.point("rollback-downs-committed")
        result = _downs_result(todo, shadows)
        result.lock_seconds = time.perf_counter() - locked
        return result, todo, plans
    con.execute("ROLLBACK")
    return _restore(database, rows, backup_path, busy_timeout_ms, _why_backup(todo, rows, plans)), todo, plans


def _copy_backs_online(
    con: sqlite3.Connection,
    database: Path,
    versions: list[str] | None,
    migrations: dict[str, Migration],
    busy_timeout_ms: int,
    mode: str,
    shadows: Online,
) -> None:
    """Start and copy the rebuilds back that run online, in short throttled transactions, into
    `shadows` (filled as they start, so that a failure removes what was started)."""
    if mode == "blocking":
        return
    backs = [
        (r.version, step)
        for r in _targets(con, versions)
        if r.version in migrations
        for step in _down_steps(migrations[r.version], r) or []
        if isinstance(step, Rebuild)
    ]
    tables = [b.table.lower() for _, b in backs]
    for version, back in backs:
        if tables.count(back.table.lower()) != 1 or not table_exists(con, back.table):
            continue  # a table rebuilt twice: blocking, inside the transaction
        if schema.plan_copy(read_table(con, back.table), back).shadow_key is None:
            continue  # rows would not keep their keys: blocking
        if schema.choose_mode(con, back, mode) != "online":
            continue
        _check_fits(con, migrations[version], back)
        state = online.start_online(
            con, back, f"{online.REVERT_PREFIX}{version}", str(database), busy_timeout_ms
        )
        if state.phase != "copy" and not online.shadow_indexes_match(con, state):
            # The old copy kept for the revert lost step with the table's indexes: copy afresh.
            online.abandon_online(con, state.source.name, str(database), busy_timeout_ms)
            state = online.start_online(
                con, back, f"{online.REVERT_PREFIX}{version}", str(database), busy_timeout_ms
            )
        shadows[(version, back.table.lower())] = state
        online.copy_online(con, state, str(database), busy_timeout_ms)


def _check_fits(con: sqlite3.Connection, m: Migration, back: Rebuild) -> None:
    """Refuse, naming the rows by key, when rows written since the migration break a constraint
    of the table's definition before it (a NULL where it was NOT NULL, a value its CHECK refuses)."""
    found = find_violations(con, back.table, back.create_sql, back.expressions)
    if found:
        raise RollbackRefused(
            f"Cannot rebuild {back.table} back to its definition before {m.path.name}",
            f"rows of {back.table} break it: " + "; ".join(v.message() for v in found),
            "those rows were written after the migration: change them so that the old definition "
            "holds them, or keep the migration; nothing was changed",
        )


def _abandon_backs(con: sqlite3.Connection, database: Path, shadows: Online, busy_timeout_ms: int) -> None:
    """The rebuilds back that were not swapped: each stays the migration's kept old copy while
    its revert window is open (end_revert_windows), else it is removed."""
    if con.in_transaction:
        con.execute("ROLLBACK")
    online.end_revert_windows(con, str(database), busy_timeout_ms)


def _targets(con: sqlite3.Connection, versions: list[str] | None) -> list[TrackingRow]:
    applied = read_tracking(con)
    if versions is None:
        if not applied:
            return []
        last = max(a.batch for a in applied.values())
        return sorted((a for a in applied.values() if a.batch == last), key=lambda a: a.version, reverse=True)
    return sorted((applied[v] for v in versions if v in applied), key=lambda a: a.version, reverse=True)


def _down_steps(m: Migration, row: TrackingRow) -> list[Step] | None:
    """The steps that undo one migration, from its file and what its transaction recorded."""
    record = row.record()
    if not record:  # tracking layout 1 or 2: the down section, then rebuilds by saved definition
        if not m.down and not (m.rebuilds and not m.up):
            return None
        return [*m.down, *(Rebuild(t, sql) for t, sql in reversed(row.rebuilt()))]
    backs = [inverse.from_json([b])[0] if b else None for b in record.get("rebuilds_back", [])]
    derived = inverse.from_json(record["down"]) if record.get("down") is not None else None
    return inverse.down_steps(m, derived, [b if isinstance(b, Rebuild) else None for b in backs])


def _why_backup(todo: list[Migration], rows: list[TrackingRow], plans: dict[str, list[Step] | None]) -> str:
    """Why only the backup can undo the batch, naming the migration and what it did."""
    m = next(m for m in todo if plans[m.version] is None)
    record = next(r for r in rows if r.version == m.version).record()
    lossy = [
        spec.table
        for spec, back in zip(m.rebuilds, record.get("rebuilds_back", []), strict=False)
        if back is None
    ]
    if lossy:
        return (
            f"{m.path.name} rebuilds {lossy[0]} dropping a column or filling one from an expression, "
            "whose old values only the backup has"
        )
    return f"{m.path.name} has no down section and its up has no derived down"


def _downs_result(todo: list[Migration], shadows: Online) -> Rollback:
    labels = [m.label for m in todo]
    swapped = "".join(
        f"; {state.source.name} rebuilt back online ({state.stats.rows:,} rows copied, "
        f"{state.stats.reconciled:,} changed ones replayed; "
        f"cut-over {state.stats.cutover_seconds * 1e3:.0f} ms)"
        for state in shadows.values()
    )
    if all(m.down for m in todo):
        return Rollback("down", labels, f"ran the down of {', '.join(labels)}{swapped}")
    return Rollback(
        "derived-down",
        labels,
        f"ran the derived down of {', '.join(labels)} (no down section; liteshift recorded the inverse "
        f"of each step when it applied it); every write since the migration is kept{swapped}",
    )


def _run_downs(con: sqlite3.Connection, todo: list[Migration], plans: Plans, shadows: Online) -> None:
    """Every down, newest first, and the tracking rows' removal, in the one open transaction."""
    try:
        for m in todo:
            for stmt in plans[m.version] or []:
                if isinstance(stmt, Rebuild):
                    _rebuild_back(con, m, stmt, shadows.get((m.version, stmt.table.lower())))
                    continue
                try:
                    con.execute(stmt)
                except sqlite3.Error as exc:
                    raise DownFailed(
                        f"The down of {m.path.name} failed",
                        failure_detail(exc, stmt),
                        "the database is left as the migration made it (nothing was undone); "
                        "fix the down section and run 'liteshift rollback' again",
                    ) from exc
            con.execute(f"DELETE FROM {TRACKING_TABLE} WHERE version = ?", (m.version,))
        _keep_needed_ledger(con)
        con.execute("COMMIT")
    except BaseException:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise


def _keep_needed_ledger(con: sqlite3.Connection) -> None:
    """Watch only the tables the proofs of the migrations still applied need (none: no ledger)."""
    ledger.keep_only(con, restore.proof_tables(con))


def _rebuild_back(con: sqlite3.Connection, m: Migration, back: Rebuild, state: online.Online | None) -> None:
    """Rebuild a table back to its saved definition (the cut-over of its online copy when it has
    one); refuse when that cannot give back every value."""
    table = back.table
    try:
        current = {c.lower() for c in read_table(con, table).columns}
        mapped = {c.lower() for c in back.expressions}
        lost = [
            c
            for c in schema.plan_copy(read_table(con, table), back).target.stored
            if c.lower() not in current and c.lower() not in mapped
        ]
        if lost:
            raise DownFailed(
                f"The rebuild of {table} in {m.path.name} cannot be undone by a rebuild",
                f"it dropped column(s) {', '.join(lost)}, whose values only the backup still has",
                "restore the backup (liteshift does when nothing was written since), or keep the "
                "database as it is",
            )
        if state is not None:
            online.cut_over(con, state)
        else:
            _check_fits(con, m, back)
            blocking.rebuild_blocking(con, back)
    except MigrationError as exc:
        if isinstance(exc, RollbackRefused):
            raise
        raise DownFailed(
            f"The down of {m.path.name} failed",
            f"rebuilding {table} back to its saved definition: {exc.why or exc.what}",
            "the database is left as the migration made it (nothing was undone)",
        ) from exc


def _restore_after(
    failed: DownFailed, database: Path, rows: list[TrackingRow], backup_path: str | None, busy_timeout_ms: int
) -> Rollback:
    """A down failed (and was rolled back): restore from the backup instead, under the same proof."""
    try:
        restored = _restore(database, rows, backup_path, busy_timeout_ms, failed.what)
    except RollbackRefused as exc:
        raise RollbackRefused(
            f"{failed.what}, and the backup cannot be restored instead",
            f"{failed.why}; {exc.why}",
            failed.hint,
        ) from exc
    restored.message = f"{failed.what} ({failed.why}); {restored.message} instead"
    return restored


def _restore(
    database: Path, rows: list[TrackingRow], backup_path: str | None, busy_timeout_ms: int, why: str
) -> Rollback:
    """Put back from the backup what the batch changed, in one write transaction that first
    proves (write ledger, schema) that nothing was written to it since the migration."""
    proof = rows[0].proof()
    backup = backup_path or (proof or {}).get("backup") or rows[0].backup_path
    versions = ", ".join(r.version for r in rows)
    if not backup or not Path(backup).exists():
        raise RollbackRefused(
            f"Cannot undo {versions}: {why}, and there is no backup",
            f"backup {backup or '(none recorded)'} is not there",
            "write a down section for the migration, or restore a backup by hand",
        )
    _check_backup(backup, busy_timeout_ms)
    if proof is None:
        reason = rows[0].record().get("no_proof") or "the migration recorded no write-ledger proof"
        raise RollbackRefused(
            f"Refusing to restore the backup {backup}",
            f"liteshift cannot prove that no write since the migration would be lost: {reason}",
            "keep the database as it is, or write a down section for the migration and run "
            "'liteshift rollback' again (a down keeps every row written since)",
        )
    if Path(backup).resolve() != Path(proof["backup"]).resolve():
        raise RollbackRefused(
            f"Refusing to restore {backup}",
            f"the migration's proof was made against the backup {proof['backup']}",
            f"run 'liteshift rollback' without --backup (it uses {proof['backup']})",
        )
    with connection(database, busy_timeout_ms, uri=True) as con, foreign_keys.foreign_keys_off(con):
        attach_immutable(con, backup, restore.BACKUP_SCHEMA)
        start = time.perf_counter()
        # The scans, before the lock: the proof, checked again under it, keeps what they found true.
        by_rows = restore.rows_to_put_back(con, proof)
        whole = {t for t in proof["tables"] if t not in by_rows}
        children = restore.children_at_risk(con, proof["tables"], whole)
        scan_seconds = time.perf_counter() - start
        begin_immediate(con, database, busy_timeout_ms)
        locked = time.perf_counter()
        copied, proof_seconds = _restore_locked(con, database, rows, proof, backup, by_rows, children)
        con.execute("COMMIT")
        lock_seconds = time.perf_counter() - locked
        con.execute(f"DETACH DATABASE {restore.BACKUP_SCHEMA}")
    tables = restore.restored_label(by_rows, copied) if copied else "no table (schema objects only)"
    return Rollback(
        "restore",
        [r.version for r in rows],
        f"restored from the backup {backup}: {tables}; the write ledger proved, under the same write "
        f"lock, that nothing was written to them since the migration ({why})",
        lock_seconds=lock_seconds,
        proof_seconds=proof_seconds,
        scan_seconds=scan_seconds,
    )


def _restore_locked(
    con: sqlite3.Connection,
    database: Path,
    rows: list[TrackingRow],
    proof: dict[str, Any],
    backup: str,
    by_rows: dict[str, list[int]],
    children: list[restore.ChildCheck],
) -> tuple[list[str], float]:
    """Inside the write transaction: check the proof, then restore; refuse (and ROLLBACK) on any
    doubt. Returns the tables copied back and the seconds the proof's check took."""
    start = time.perf_counter()
    found = restore.problems(con, proof)
    proof_seconds = time.perf_counter() - start
    if found:
        con.execute("ROLLBACK")
        hint = "keep the database as it is (the migration stays applied)"
        if table_exists(con, found[0][0]):
            hint += ", or move those rows by hand: " + _compare_command(con, database, backup, found[0][0])
        raise RollbackRefused(
            "Refusing to restore the backup over newer writes",
            f"written or changed since the migration: {'; '.join(text for _, text in found)}; "
            f"restoring {backup} would discard that",
            hint,
        )
    faults.point("rollback-before-restore")
    copied = restore.restore_changed(con, proof, by_rows)
    faults.point("rollback-restoring")
    broken = restore.foreign_key_problems(con, [t for t in copied if t not in by_rows], by_rows, children)
    if broken:
        con.execute("ROLLBACK")
        raise RollbackRefused(
            "Refusing to restore the backup",
            f"the restored rows would break foreign keys: {', '.join(broken)}",
            "keep the database as it is, or fix those rows and run 'liteshift rollback' again",
        )
    for r in rows:
        con.execute(f"DELETE FROM {TRACKING_TABLE} WHERE version = ?", (r.version,))
    _keep_needed_ledger(con)
    return copied, proof_seconds


def finish_undo(database: Path, busy_timeout_ms: int = 5000) -> str:
    """Keep what is applied and end its undo from the backup: drop the restore proofs and the
    write ledger's triggers (the application's writes stop paying for them). Downs still work."""
    with connection(database, busy_timeout_ms) as con:
        begin_immediate(con, database, busy_timeout_ms)
        ended = []
        for row in read_tracking(con).values():
            record = row.record()
            if record.get("proof") is not None:
                record.update(
                    proof=None, no_proof="its restore proof was ended by 'liteshift rollback --finish'"
                )
                con.execute(
                    f"UPDATE {TRACKING_TABLE} SET fingerprint = ? WHERE version = ?",
                    (json.dumps(record), row.version),
                )
                ended.append(f"{row.version}_{row.name}")
        watched = sorted(ledger.guarded(con))
        ledger.keep_only(con, [])
        con.execute("COMMIT")
        windows = online.end_revert_windows(con, str(database), busy_timeout_ms, every=True)
    if not ended and not watched and not windows:
        return "nothing to finish: no migration keeps a restore proof or an old copy"
    said = []
    if ended or watched:
        said.append(
            f"ended the restore proof of {', '.join(ended) or 'no migration'} and removed the write "
            f"ledger from {', '.join(watched) or 'no table'}; a migration without a down can no longer "
            "be undone from its backup"
        )
    said += windows
    return "; ".join(said)


def _compare_command(con: sqlite3.Connection, database: Path, backup: str, table: str) -> str:
    """A sqlite3 command that lists the rows of a table written since the backup (by the columns
    both versions have), to move by hand."""
    live = [r[1] for r in con.execute(f"PRAGMA main.table_info({quote_ident(table)})")]
    saved = {r[1] for r in con.execute(f"PRAGMA {restore.BACKUP_SCHEMA}.table_info({quote_ident(table)})")}
    t = f"[{table}]" if "]" not in table else quote_ident(table)
    cols = ", ".join(f"[{c}]" if "]" not in c else quote_ident(c) for c in live if c in saved)
    sql = f"SELECT * FROM main.{t}"
    if cols:
        sql = f"SELECT {cols} FROM main.{t} EXCEPT SELECT {cols} FROM b.{t}"
    attach = backup.replace("'", "''")
    text = f"ATTACH '{attach}' AS b; {sql};"
    for ch in ("\\", '"', "$", "`"):
        text = text.replace(ch, "\\" + ch)
    return f'sqlite3 {shlex.quote(str(database))} "{text}"'


def _check_backup(backup: str, busy_timeout_ms: int) -> None:
    """Never restore an unfinished (.partial) or damaged backup over the live database."""
    if backup.endswith(PARTIAL_SUFFIX):
        raise RollbackRefused(
            f"Refusing to restore {backup}",
            "a .partial file is a backup that was never finished and verified",
            "pass a backup without the .partial suffix, or keep the database as it is",
        )
    # Read-write like the restore itself: a WAL-header copy opened read-only leaves -wal/-shm behind.
    with connection(backup, busy_timeout_ms) as con:
        try:
            problems = pragma_check(con, "quick_check")
        except sqlite3.DatabaseError as exc:
            problems = [str(exc)]
    if problems:
        raise RollbackRefused(
            f"Refusing to restore {backup}",
            f"the backup fails quick_check: {problems[0]}",
            "the database was not changed; restore an older good backup by hand",
        )


def _kept_indexes(todo: list[Migration], plans: dict[str, list[Step] | None]) -> set[str]:
    """Indexes an up "created" with IF NOT EXISTS that were there before: its derived down keeps them."""
    kept = set()
    for m in todo:
        plan = plans[m.version]
        if m.down or plan is None:
            continue
        dropped = {
            unquote(d.group("name")) for s in plan if isinstance(s, str) and (d := DROP_INDEX_RE.match(s))
        }
        kept |= set(m.created_index_names()) - dropped
    return kept


def _verify(database: Path, todo: list[Migration], kept: set[str], busy_timeout_ms: int) -> list[str]:
    """After the rollback: integrity, created indexes gone (but those there before), tracking rows gone."""
    with connection(database, busy_timeout_ms) as con:
        problems = pragma_check(con, "quick_check")
        if problems:
            raise CheckFailed(
                "quick_check failed after the rollback",
                problems[0],
                "stop writes to the database and restore the backup by hand",
            )
        left = [
            n
            for m in todo
            for n in m.created_index_names()
            if n not in kept
            and con.execute("SELECT 1 FROM sqlite_schema WHERE type='index' AND name=?", (n,)).fetchone()
        ]
        tracked = set(read_tracking(con)) & {m.version for m in todo}
    if left or tracked:
        raise CheckFailed(
            "The rollback did not undo everything",
            f"indexes still present: {left}; tracking rows still present: {sorted(tracked)}",
            "inspect the database before running again",
        )
    return ["quick_check: ok", "created indexes gone", "tracking rows gone"]
