"""The `liteshift` command: demo, run, status, rollback. Only argument handling lives here."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from liteshift.config import DEFAULT_MIGRATIONS_DIR
from liteshift.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, MigrationError
from liteshift.runtime import command_settings, configure_prefect, connect_api

DEMO_DB = Path("data/worklog_storage.db")


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one command; return the exit code."""
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except MigrationError as exc:
        _print_error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        print(
            "Interrupted: the database is either fully migrated or untouched; "
            "run 'liteshift status' to see which.",
            file=sys.stderr,
        )
        return EXIT_FAILED


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="liteshift", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="build a demo worklog database and migrate it")
    demo.add_argument("--rows", type=int, default=100_000, help="worklog rows (default 100000)")
    demo.add_argument("--database", type=Path, default=DEMO_DB, help=f"default {DEMO_DB}")
    demo.add_argument("--json", action="store_true", help="print one JSON object")
    demo.set_defaults(func=cmd_demo)

    run = sub.add_parser("run", help="apply the pending migrations to a database")
    _common(run)
    run.add_argument("--backup-dir", type=Path, help="where backups go (default: beside the db)")
    run.add_argument("--report-dir", type=Path, help="where reports go (default: reports/)")
    run.add_argument("--integrity", choices=["quick", "full"], help="pre-flight check level")
    run.add_argument(
        "--plan-check",
        choices=["fail", "warn"],
        help="when a query does not use its expected index (default fail)",
    )
    run.add_argument("--disk-factor", type=float, help="free space needed, x db size (default 2)")
    run.add_argument(
        "--busy-timeout", type=int, dest="busy_timeout_ms", help="ms to wait for a lock (default 5000)"
    )
    run.add_argument("--retries", type=int, help="retries of a safe step on a locked database")
    run.add_argument("--json", action="store_true", help="print one JSON object")
    run.set_defaults(func=cmd_run)

    plan = sub.add_parser("plan", help="dry run: rehearse the pending migrations on a copy")
    _common(plan)
    plan.add_argument(
        "--backup-dir", type=Path, help="where the temporary copy goes (default: beside the db)"
    )
    plan.add_argument("--json", action="store_true", help="print one JSON object")
    plan.set_defaults(func=cmd_plan)

    status = sub.add_parser("status", help="applied and pending migrations, and checksum drift")
    _common(status)
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.set_defaults(func=cmd_status)

    rollback = sub.add_parser("rollback", help="undo the last applied batch of migrations")
    _common(rollback)
    rollback.add_argument("--backup", help="backup to restore when a migration has no down")
    rollback.add_argument("--json", action="store_true", help="print one JSON object")
    rollback.set_defaults(func=cmd_rollback)
    return p


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--database", type=Path, required=True, help="the SQLite file")
    p.add_argument(
        "--migrations",
        type=Path,
        default=DEFAULT_MIGRATIONS_DIR,
        help="directory of NNN_slug.sql files (default: the project's migrations/)",
    )


def _print_error(exc: MigrationError) -> None:
    print(f"Error: {exc.what}" + (f": {exc.why}" if exc.why else ""), file=sys.stderr)
    if exc.hint:
        print(f"Try: {exc.hint}", file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    """Run the migrate-database flow on the embedded (or configured) Prefect API."""
    params = {
        "database": str(args.database),
        "migrations_dir": str(args.migrations),
        "backup_dir": _opt(args.backup_dir),
        "report_dir": _opt(args.report_dir),
        "integrity_level": args.integrity,
        "plan_check": args.plan_check,
        "disk_factor": args.disk_factor,
        "busy_timeout_ms": args.busy_timeout_ms,
        "retries": args.retries,
    }
    return _run_flow(params, args.json)


def _opt(value: Path | None) -> str | None:
    return None if value is None else str(value)


def _run_flow(params: dict[str, Any], as_json: bool) -> int:
    configure_prefect()
    api = connect_api()  # an embedded API server starts now, while we import
    from flows.migrate import migrate_database

    api.wait()
    try:
        with command_settings(api):
            summary = migrate_database(**params)
    except Exception as exc:
        report = getattr(exc, "liteshift_report", None)
        summary = report.summary() if report is not None else {"status": "failed", "error": str(exc)}
        if as_json:
            print(json.dumps(summary))
        else:
            _print_summary(summary)
        if isinstance(exc, MigrationError):
            _print_error(exc)
            return exc.exit_code
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if as_json:
        print(json.dumps(summary))
    else:
        _print_summary(summary)
    return EXIT_OK


def _print_summary(s: dict[str, Any]) -> None:
    if s.get("status") == "nothing-to-do":
        print(f"Nothing to migrate: {s['database']} is up to date. Report: {s.get('report_path')}")
        return
    steps = s.get("steps", [])
    for step in steps if len(steps) > 1 else []:
        mark = {"passed": "ok", "failed": "FAILED"}.get(step["state"], step["state"])
        print(f"  {step['name']:<22} {mark:<7} {step['seconds']:8.3f} s  {step['detail']}")
    if s.get("applied"):
        print(f"Applied: {', '.join(s['applied'])} (write lock held {s['lock_seconds']:.3f} s)")
    for q in s.get("queries", []):
        b, a = q.get("before") or {}, q.get("after") or {}
        print(
            f"  {q['name']:<28} {q['plan']['index'] or 'no index'}: p50 "
            f"{b.get('p50_ms', 0):.3f} ms -> {a.get('p50_ms', 0):.3f} ms"
        )
    for w in s.get("warnings", []):
        print(f"Warning: {w}")
    if s.get("rollback"):
        print(f"Rollback: {s['rollback'].get('action')}: {s['rollback'].get('message')}")
    if s.get("growth_pct") is not None:
        print(
            f"Database size: {s['size_before'] / 1e6:.1f} MB -> {s['size_after'] / 1e6:.1f} MB "
            f"({s['growth_pct']:+.1f}%)"
        )
    print(f"Status: {s.get('status')}. Report: {s.get('report_path')}")


def cmd_demo(args: argparse.Namespace) -> int:
    """Build the demo database when it is missing, then run the pipeline on it."""
    from liteshift.demo import build_demo_db

    db: Path = args.database
    if db.exists():
        print(f"Using the existing demo database {db} (delete it to start afresh)")
    else:
        print(f"Building {db} with {args.rows:,} worklogs ...")
        build_demo_db(db, args.rows)
    return _run_flow({"database": str(db), "migrations_dir": str(DEFAULT_MIGRATIONS_DIR)}, args.json)


def cmd_plan(args: argparse.Namespace) -> int:
    """Rehearse the pending migrations on a copy and print what would change; write nothing."""
    from liteshift.config import RunConfig
    from tasks.plan import dry_run, render_plan

    cfg = RunConfig.model_validate(
        {"database": args.database, "migrations_dir": args.migrations, "backup_dir": args.backup_dir}
    )
    result = dry_run(cfg)
    print(json.dumps(result.summary()) if args.json else render_plan(result), end="\n" if args.json else "")
    return EXIT_FAILED if result.error else EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    """Applied, pending and drifted migrations, read without Prefect."""
    from liteshift import migrations as mig
    from liteshift.db import check_is_sqlite_file, connection

    check_is_sqlite_file(args.database)
    files = mig.load_migrations(args.migrations)
    with connection(args.database, readonly=True) as con:
        applied = mig.applied_migrations(con)
    drift = [
        {"version": m.version, "file": m.path.name, "applied": applied[m.version].checksum, "now": m.checksum}
        for m in files
        if m.version in applied and applied[m.version].checksum != m.checksum
    ]
    status = {
        "database": str(args.database),
        "applied": [
            {"version": a.version, "name": a.name, "applied_at": a.applied_at} for a in applied.values()
        ],
        "pending": [m.label for m in mig.pending(files, applied)],
        "drift": drift,
    }
    if args.json:
        print(json.dumps(status))
    else:
        for a in applied.values():
            print(f"applied  {a.version}_{a.name}  at {a.applied_at}")
        for label in status["pending"]:
            print(f"pending  {label}")
        for d in drift:
            print(f"DRIFT    {d['file']}: applied {d['applied']}, file now {d['now']}")
        if not applied and not status["pending"]:
            print("no migrations found")
    return EXIT_BAD_INPUT if drift else EXIT_OK


def cmd_rollback(args: argparse.Namespace) -> int:
    """Undo the last applied batch through the rollback-migration flow."""
    from liteshift.db import check_is_sqlite_file

    check_is_sqlite_file(args.database)
    configure_prefect()
    api = connect_api()
    from flows.rollback import rollback_migration

    api.wait()
    with command_settings(api):
        result = rollback_migration(str(args.database), str(args.migrations), None, args.backup)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"Rollback: {result['action']}: {result['message']}")
        for v in result["verified"]:
            print(f"  verified: {v}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
