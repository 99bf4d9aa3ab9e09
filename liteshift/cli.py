"""The `liteshift` command: demo, run, plan, status, rollback. Only argument handling lives here.

status, plan, and a run with nothing pending answer without importing Prefect; only a run with
pending work (and rollback) starts a flow.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import types
import typing
from pathlib import Path
from typing import Any

from liteshift.config import DEMO_MIGRATIONS_DIR, RunConfig, cli_flag
from liteshift.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, BadInput, MigrationError

if typing.TYPE_CHECKING:
    from liteshift.report import RunReport
    from liteshift.status import Status

DEMO_DB = Path("data/worklog_storage.db")
# The RunConfig fields that plan, status and rollback also take.
LOCATION = ("database", "migrations_dir", "busy_timeout_ms")


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
    add_config_options(run, RunConfig.model_fields)
    run.set_defaults(func=cmd_run)

    plan = sub.add_parser("plan", help="dry run: rehearse the pending migrations on a copy")
    add_config_options(plan, (*LOCATION, "backup_dir"))
    plan.set_defaults(func=cmd_plan)

    status = sub.add_parser("status", help="applied and pending migrations, and checksum drift")
    add_config_options(status, LOCATION)
    status.set_defaults(func=cmd_status)

    rollback = sub.add_parser("rollback", help="undo the last applied batch of migrations")
    add_config_options(rollback, LOCATION)
    rollback.add_argument("--backup", help="backup to restore when a migration has no down")
    rollback.set_defaults(func=cmd_rollback)
    return p


def add_config_options(p: argparse.ArgumentParser, fields: typing.Iterable[str]) -> None:
    """One option per RunConfig field, typed, with the field's description and default as help."""
    for name in fields:
        info = RunConfig.model_fields[name]
        kind, choices = _option_type(info.annotation)
        default = info.get_default(call_default_factory=True)
        shown = "" if default is None or name == "database" else f" (default {default})"
        kwargs: dict[str, Any] = {"dest": name, "default": None, "help": f"{info.description}{shown}"}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            metavar = None if choices else cli_flag(name).lstrip("-").replace("-", "_").upper()
            kwargs.update(type=kind, choices=choices, metavar=metavar)
        p.add_argument(cli_flag(name), required=name == "database", **kwargs)
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _option_type(annotation: Any) -> tuple[type, list[str] | None]:
    """The argparse type (and choices) of a field: Optional stripped, a Literal as choices."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return _option_type(args[0])
    if typing.get_origin(annotation) is typing.Literal:
        return str, [str(a) for a in args]
    return annotation, None


def _config(args: argparse.Namespace, **extra: Any) -> RunConfig:
    values = {k: v for k, v in vars(args).items() if k in RunConfig.model_fields}
    return RunConfig.from_parameters({**values, **extra})


def _print_error(exc: MigrationError) -> None:
    print(f"Error: {exc.what}" + (f": {exc.why}" if exc.why else ""), file=sys.stderr)
    if exc.hint:
        print(f"Try: {exc.hint}", file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    """Answer at once when nothing is pending; otherwise run the migrate-database flow."""
    return _migrate(_config(args), args.json)


def _migrate(cfg: RunConfig, as_json: bool) -> int:
    """Say so at once when nothing is pending (drift refused); otherwise run the flow."""
    from liteshift.status import read_status

    status = read_status(cfg.database, cfg.migrations_dir, cfg.busy_timeout_ms)
    if status.pending:
        return _run_flow(cfg, as_json)
    if status.drift:
        raise status.drift[0].error()
    _print_nothing_to_do(status, cfg, as_json)
    return EXIT_OK


def _print_nothing_to_do(status: Status, cfg: RunConfig, as_json: bool) -> None:
    from liteshift import lock, rebuild

    warnings = lock.clear_dead_run(cfg.database, cfg.busy_timeout_ms)
    warnings += rebuild.finish_leftovers(str(cfg.database), cfg.busy_timeout_ms)
    if as_json:
        print(json.dumps({**status.summary(), "status": "nothing-to-do", "warnings": warnings}))
        return
    print(
        f"Nothing to migrate: {cfg.database} is up to date "
        f"({len(status.applied)} applied, none pending in {cfg.migrations_dir}); no flow run started."
    )
    for w in warnings:
        print(f"Warning: {w}")


def _run_flow(cfg: RunConfig, as_json: bool) -> int:
    from liteshift.flows.runtime import command_settings, configure_prefect, connect_api

    configure_prefect()
    api = connect_api()  # an embedded API server starts now, while we import
    from liteshift.flows.migrate import migrate_database

    api.wait()
    try:
        with command_settings(api):
            report = migrate_database(**cfg.flow_parameters())
    except Exception as exc:
        failed: RunReport | None = getattr(exc, "liteshift_report", None)
        if failed is not None:
            _show(failed, as_json)
        elif as_json:
            print(json.dumps({"status": "failed", "error": str(exc)}))
        if isinstance(exc, MigrationError):
            _print_error(exc)
            return exc.exit_code
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    _show(report, as_json)
    return EXIT_OK


def _show(report: RunReport, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report.summary()))
    else:
        _print_report(report)


def _print_report(r: RunReport) -> None:
    if r.status == "nothing-to-do":
        print(f"Nothing to migrate: {r.database} is up to date. Report: {r.report_path}")
        return
    for step in r.steps if len(r.steps) > 1 else []:
        mark = {"passed": "ok", "failed": "FAILED"}.get(step.state, step.state)
        print(f"  {step.name:<22} {mark:<7} {step.seconds:8.3f} s  {step.detail}")
    if r.applied and r.lock_seconds is not None:
        print(f"Applied: {', '.join(r.applied)} (write lock held {r.lock_seconds:.3f} s)")
    for q in r.queries:
        before = f"{q.before.p50_ms:.3f} ms" if q.before else "—"
        after = f"{q.after.p50_ms:.3f} ms" if q.after else "—"
        print(f"  {q.name:<28} {q.plan.index or 'no index'}: p50 {before} -> {after}")
    for w in r.warnings:
        print(f"Warning: {w}")
    if r.rollback:
        print(f"Rollback: {r.rollback.action}: {r.rollback.message}")
    if r.growth_pct is not None and r.size_before and r.size_after:
        mb_before, mb_after = r.size_before / 1e6, r.size_after / 1e6
        print(f"Database size: {mb_before:.1f} MB -> {mb_after:.1f} MB ({r.growth_pct:+.1f}%)")
        if r.free_after:
            print(f"  of which {r.free_after / 1e6:.1f} MB are free pages: {r.free_note()}")
    print(f"Status: {r.status}. Report: {r.report_path}")


def cmd_demo(args: argparse.Namespace) -> int:
    """Build the demo database when it is missing, then migrate it with the packaged migration."""
    from liteshift.demo import build_demo_db

    db: Path = args.database
    if db.exists():
        print(f"Using the existing demo database {db} (delete it to start afresh)")
    else:
        print(f"Building {db} with {args.rows:,} worklogs ...")
        db.parent.mkdir(parents=True, exist_ok=True)
        build_demo_db(db, args.rows)
    return _migrate(
        RunConfig.from_parameters({"database": db, "migrations_dir": DEMO_MIGRATIONS_DIR}), args.json
    )


def cmd_plan(args: argparse.Namespace) -> int:
    """Rehearse the pending migrations on a copy and print what would change; write nothing."""
    from liteshift.tasks.dry_run import dry_run, render_plan

    result = dry_run(_config(args))
    print(json.dumps(result.summary()) if args.json else render_plan(result), end="\n" if args.json else "")
    return EXIT_FAILED if result.error else EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    """Applied, pending and drifted migrations, read without Prefect."""
    from liteshift.status import read_status

    cfg = _config(args)
    status = read_status(cfg.database, cfg.migrations_dir, cfg.busy_timeout_ms)
    if args.json:
        print(json.dumps(status.summary()))
    else:
        for a in status.applied:
            print(f"applied  {a.version}_{a.name}  at {a.applied_at}")
        for label in status.pending:
            print(f"pending  {label}")
        for d in status.drift:
            print(f"DRIFT    {d.file}: applied {d.applied}, file now {d.now}")
        if not status.applied and not status.pending:
            print("no migrations found")
    return EXIT_BAD_INPUT if status.drift else EXIT_OK


def cmd_rollback(args: argparse.Namespace) -> int:
    """Undo the last applied batch through the rollback-migration flow; every failure exits 1 or 2."""
    from liteshift.db import CORRUPT_HINT, check_is_sqlite_file, is_locked_error

    cfg = _config(args)
    check_is_sqlite_file(cfg.database)
    from liteshift.flows.runtime import command_settings, configure_prefect, connect_api

    configure_prefect()
    api = connect_api()
    from liteshift.flows.rollback import rollback_migration

    api.wait()
    try:
        with command_settings(api):
            result = rollback_migration(
                str(cfg.database), str(cfg.migrations_dir), None, args.backup, cfg.busy_timeout_ms
            )
    except MigrationError:
        raise
    except sqlite3.DatabaseError as exc:
        hint = "wait for the writer and run again" if is_locked_error(exc) else CORRUPT_HINT
        raise BadInput(f"Database {cfg.database} cannot be rolled back", str(exc), hint) from exc
    except Exception as exc:
        raise MigrationError(
            "The rollback did not finish",
            f"{type(exc).__name__}: {exc}",
            "run 'liteshift status' to see what is applied, then 'liteshift rollback' again",
        ) from exc
    if args.json:
        print(json.dumps(result.__dict__))
    else:
        print(f"Rollback: {result.action}: {result.message}")
        for v in result.verified:
            print(f"  verified: {v}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
