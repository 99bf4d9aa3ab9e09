"""The `liteshift` command: demo, run, plan, status, rollback, health, maintain, archive. Only
argument handling lives here.

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
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from liteshift.archive.config import ArchiveConfig
from liteshift.core import progress
from liteshift.core.config import (
    DEMO_MIGRATIONS_DIR,
    FlowParams,
    RunConfig,
    default_migrations_dir,
    default_report_dir,
    option_name,
)
from liteshift.core.errors import (
    EXIT_BAD_INPUT,
    EXIT_CRITICAL,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_WARNING,
    BadInput,
    MigrationError,
)

if typing.TYPE_CHECKING:
    from liteshift.archive.move import ArchiveResult
    from liteshift.health.maintenance import Maintenance
    from liteshift.migrate.status import Status
    from liteshift.tasks.report import RunReport

from liteshift.fleet.config import FleetConfig
from liteshift.health.config import HealthConfig, MaintainConfig

T = TypeVar("T")
M = TypeVar("M")
P = TypeVar("P", bound=FlowParams)
DEMO_DB = Path("data/worklog_storage.db")
# The RunConfig fields that plan, status and rollback also take.
LOCATION = ("database", "migrations_dir", "busy_timeout_ms")
# `liteshift health` measures without Prefect: the flow's fields that concern one measurement.
HEALTH_OPTIONS = ("database", "migrations_dir", "report_dir", "thresholds", "quick_check")
# A repair's thresholds come from the health check that schedules it, not from a person.
MAINTAIN_OPTIONS = tuple(f for f in MaintainConfig.model_fields if f != "thresholds")
FLEET_OPTIONS = tuple(FleetConfig.model_fields)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one command; return the exit code."""
    args = _parser().parse_args(argv)
    if args.command in SHOWS_PROGRESS:
        progress.show_on(sys.stderr)  # one live line on a terminal, plain lines otherwise
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
    finally:
        progress.hide()


# The commands whose long phases (backup, copy, verify, drop, archive) draw a progress line on
# stderr: rewritten in place on a terminal; otherwise, and with --json, a plain line now and then.
SHOWS_PROGRESS = frozenset({"run", "demo", "plan", "rollback", "archive", "maintain"})


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="liteshift", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="build a demo worklog database and migrate it")
    demo.add_argument("--rows", type=int, default=100_000, help="worklog rows (default 100000)")
    demo.add_argument("--database", type=Path, default=DEMO_DB, help=f"default {DEMO_DB}")
    demo.add_argument("--json", action="store_true", help="print one JSON object")
    demo.set_defaults(func=cmd_demo)

    run = sub.add_parser("run", help="apply the pending migrations to a database")
    add_options(run, RunConfig, RunConfig.model_fields)
    run.set_defaults(func=cmd_run)

    plan = sub.add_parser("plan", help="dry run: rehearse the pending migrations on a copy")
    add_options(plan, RunConfig, (*LOCATION, "backup_dir"))
    plan.set_defaults(func=cmd_plan)

    status = sub.add_parser("status", help="applied and pending migrations, and checksum drift")
    add_options(status, RunConfig, LOCATION)
    status.set_defaults(func=cmd_status)

    rollback = sub.add_parser("rollback", help="undo the last applied batch of migrations")
    add_options(rollback, RunConfig, (*LOCATION, "rebuild_mode"))
    rollback.add_argument("--backup", help="backup to restore when a migration has no down")
    rollback.add_argument(
        "--finish",
        action="store_true",
        help="keep what is applied and end its undo from the backup: drop the restore proofs and "
        "the write ledger's triggers",
    )
    rollback.set_defaults(func=cmd_rollback)

    health = sub.add_parser(
        "health", help="measure a database's health, read-only; exit 3 on warnings, 4 on critical"
    )
    add_options(health, HealthConfig, HEALTH_OPTIONS)
    health.set_defaults(func=cmd_health)

    maintain = sub.add_parser(
        "maintain", help="one repair (analyze, reindex, vacuum), backed up and verified"
    )
    add_options(maintain, MaintainConfig, MAINTAIN_OPTIONS)
    maintain.set_defaults(func=cmd_maintain)

    archive = sub.add_parser("archive", help="move rows older than a cutoff into an archive file")
    add_options(archive, ArchiveConfig, ArchiveConfig.model_fields, one_of=("before", "older_than"))
    archive.set_defaults(func=cmd_archive)

    fl = sub.add_parser("fleet", help="one migration over many databases on several hosts (a Prefect server)")
    fl.add_argument("action", choices=["plan", "run", "status"])
    add_options(fl, FleetConfig, FLEET_OPTIONS)
    fl.set_defaults(func=cmd_fleet)
    return p


def add_options(
    p: argparse.ArgumentParser,
    model: type[FlowParams],
    fields: typing.Iterable[str],
    one_of: tuple[str, ...] = (),
) -> None:
    """One option per field of a flow's model, named by option_name(), typed, its description and
    default as help; a field without a default is required. `one_of`: exactly one of these."""
    group = p.add_mutually_exclusive_group(required=True) if one_of else None
    for name in fields:
        info = model.model_fields[name]
        kind, choices = _option_type(info.annotation)
        default = info.get_default(call_default_factory=True)
        quiet = info.is_required() or default in (None, False, [], {}) or name == "database"
        shown = "" if quiet else f" (default {default})"
        text = f"{info.description}{shown}".replace("%", "%%")  # argparse formats help with %
        kwargs: dict[str, Any] = {"dest": name, "default": None, "help": text}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction if model.negatable else "store_true"
        elif kind in (list, dict):  # repeatable; a dict as NAME=VALUE pairs
            shape = "NAME=VALUE" if kind is dict else option_name(name).lstrip("-").upper()
            kwargs.update(action="append", metavar=shape)
        else:
            metavar = None if choices else option_name(name).lstrip("-").replace("-", "_").upper()
            kwargs.update(type=kind, choices=choices, metavar=metavar)
        if name in one_of and group is not None:
            group.add_argument(option_name(name), **kwargs)
        else:
            p.add_argument(option_name(name), required=info.is_required(), **kwargs)
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _option_type(annotation: Any) -> tuple[type, list[str] | None]:
    """The argparse type (and choices) of a field: Optional stripped, a Literal as choices, a
    union of a count and a list read as text."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return _option_type(args[0]) if len(args) == 1 else (str, None)
    if typing.get_origin(annotation) is typing.Literal:
        return str, [str(a) for a in args]
    if typing.get_origin(annotation) in (list, dict):
        return typing.get_origin(annotation), None
    return annotation, None


def _config(args: argparse.Namespace, **extra: Any) -> RunConfig:
    return _params(RunConfig, args, **extra)


def _params(model: type[P], args: argparse.Namespace, **extra: Any) -> P:
    """The model of a command from its parsed options (None: the field's default)."""
    values = {k: v for k, v in vars(args).items() if k in model.model_fields}
    for name, value in values.items():
        if value is not None and _option_type(model.model_fields[name].annotation)[0] is dict:
            values[name] = dict(_pair(text, option_name(name)) for text in value)
    return model.from_parameters({**values, **extra})


def _print_error(exc: MigrationError) -> None:
    print(f"Error: {exc.what}" + (f": {exc.why}" if exc.why else ""), file=sys.stderr)
    if exc.hint:
        print(f"Try: {exc.hint}", file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    """Answer at once when nothing is pending; otherwise run the migrate-database flow."""
    return _migrate(_config(args), args.json)


def _migrate(cfg: RunConfig, as_json: bool) -> int:
    """Say so at once when nothing is pending (drift refused); otherwise run the flow."""
    from liteshift.migrate.status import read_status

    status = read_status(cfg.database, cfg.migrations_dir, cfg.busy_timeout_ms)
    if status.pending:
        return _run_flow(cfg, as_json)
    if status.drift:
        raise status.drift[0].error()
    _print_nothing_to_do(status, cfg, as_json)
    return EXIT_OK


def _print_nothing_to_do(status: Status, cfg: RunConfig, as_json: bool) -> None:
    from liteshift.core import lock
    from liteshift.rebuild import online

    warnings = lock.clear_dead_run(cfg.database, cfg.busy_timeout_ms)
    warnings += online.finish_leftovers(str(cfg.database), cfg.busy_timeout_ms)
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
    from liteshift.tasks.report import render_text

    print(json.dumps(report.summary()) if as_json else render_text(report), end="\n" if as_json else "")


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
    from liteshift.migrate.status import read_status

    cfg = _config(args)
    status = read_status(cfg.database, cfg.migrations_dir, cfg.busy_timeout_ms)
    if args.json:
        print(json.dumps(status.summary()))
    else:
        for a in status.applied:
            print(f"applied  {a.version}_{a.name}  at {a.applied_at}  (undo: {a.undo_path()})")
        for label in status.pending:
            print(f"pending  {label}")
        for d in status.drift:
            print(f"DRIFT    {d.file}: applied {d.applied}, file now {d.now}")
        if not status.applied and not status.pending:
            print("no migrations found")
    return EXIT_BAD_INPUT if status.drift else EXIT_OK


def cmd_rollback(args: argparse.Namespace) -> int:
    """Undo the last applied batch through the rollback-migration flow; every failure exits 1 or 2."""
    from liteshift.core.db import CORRUPT_HINT, check_is_sqlite_file, is_locked_error

    cfg = _config(args)
    check_is_sqlite_file(cfg.database)
    if args.finish:
        from liteshift.tasks.rollback import finish_undo

        message = finish_undo(cfg.database, cfg.busy_timeout_ms)
        print(json.dumps({"action": "finish", "message": message}) if args.json else f"Rollback: {message}")
        return EXIT_OK
    from liteshift.flows.runtime import command_settings, configure_prefect, connect_api

    configure_prefect()
    api = connect_api()
    from liteshift.flows.rollback import rollback_migration

    api.wait()
    try:
        with command_settings(api):
            result = rollback_migration(
                str(cfg.database),
                str(cfg.migrations_dir),
                None,
                args.backup,
                cfg.busy_timeout_ms,
                cfg.rebuild_mode,
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


def cmd_health(args: argparse.Namespace) -> int:
    """Measure read-only and record the history; no Prefect, no events (the flow sends those)."""
    from liteshift.health.history import History, history_path
    from liteshift.health.measure import measure
    from liteshift.health.render import render_markdown
    from liteshift.health.thresholds import Thresholds

    cfg = _params(HealthConfig, args)
    limits = Thresholds.from_parameters(cfg.thresholds or {})
    report_dir = cfg.report_dir or default_report_dir()
    history = History(history_path(report_dir))
    report = measure(
        cfg.database,
        migrations_dir=cfg.migrations_dir or default_migrations_dir(),
        report_dir=report_dir,
        thresholds=limits,
        history=history,
        quick_check=bool(cfg.quick_check),
    )
    history.record(report)
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        print(render_markdown(report), end="")
    severities = {f.severity for f in report.breaches()}
    return EXIT_CRITICAL if "critical" in severities else EXIT_WARNING if severities else EXIT_OK


def _pair(text: str, option: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep:
        raise BadInput(f"Invalid {option} {text!r}", "it has no '='", "write it as NAME=VALUE")
    return name.strip(), value.strip()


def cmd_maintain(args: argparse.Namespace) -> int:
    """Run the database-maintenance flow for one action."""
    cfg = _params(MaintainConfig, args)

    def run() -> tuple[Maintenance, str]:
        from liteshift.flows.maintenance import maintain_database, render

        result = maintain_database(**cfg.flow_parameters())
        return result, render(result)

    result = _show_flow_result(_in_flow(cfg.database, run), args.json)
    return EXIT_OK if result.status == "completed" else EXIT_FAILED


def cmd_archive(args: argparse.Namespace) -> int:
    """Run the archive-rows flow."""
    cfg = _params(ArchiveConfig, args)

    def run() -> tuple[ArchiveResult, str]:
        from liteshift.flows.archive import archive_rows, render

        result = archive_rows(**cfg.flow_parameters())
        return result, render(result)

    _show_flow_result(_in_flow(cfg.database, run), args.json)
    return EXIT_OK


R = TypeVar("R", "Maintenance", "ArchiveResult")


def _show_flow_result(done: tuple[R, str], as_json: bool) -> R:
    """A flow's result as one JSON object, or as the markdown its flow publishes."""
    result, text = done
    print(json.dumps(result.as_dict()) if as_json else text, end="\n" if as_json else "")
    return result


def cmd_fleet(args: argparse.Namespace) -> int:
    """plan: write and show the plan; run: the migrate-fleet flow; status: each database's state."""
    canary = args.canary
    if canary is not None:
        canary = int(canary) if canary.isdigit() else canary.split(",")
    cfg = _params(FleetConfig, args, canary=canary, parameters=_child_parameters(args.parameters))
    if args.action == "run":

        def run() -> dict[str, int]:
            from liteshift.flows.fleet import migrate_fleet

            return migrate_fleet(**cfg.flow_parameters())

        counts = _on_api(run)
        done = ", ".join(f"{v} {k}" for k, v in counts.items())
        print(json.dumps(counts) if args.json else f"Fleet {cfg.fleet_id} done: {done}")
        from liteshift.fleet.outcomes import unfinished

        left = unfinished(cfg.fleet_id, str(cfg.manifest), counts)
        if left is not None:
            raise left
        return EXIT_OK

    def show() -> str:
        from liteshift.flows import fleet as fleet_flow

        plan = fleet_flow.load_or_make_plan(
            cfg.manifest,
            cfg.fleet_id,
            None if cfg.migrations_dir is None else str(cfg.migrations_dir),
            cfg.canary,
            cfg.waves,
            cfg.max_failures,
            cfg.max_failure_rate,
            None if cfg.plan_dir is None else str(cfg.plan_dir),
            replan=cfg.replan,
            look_only=args.action == "status",
        )
        children = fleet_flow.adopt(plan) if args.action == "status" else None
        return str(fleet_flow.describe(plan, children, args.json))

    print(_on_api(show))
    return EXIT_OK


def _child_parameters(pairs: list[str] | None) -> dict[str, Any] | None:
    """--param NAME=VALUE pairs, each checked against RunConfig (the child's parameters)."""
    if not pairs:
        return None
    values: dict[str, Any] = {}
    for text in pairs:
        name, value = _pair(text, "--param")
        try:
            values[name] = json.loads(value)
        except json.JSONDecodeError:
            values[name] = value
    RunConfig.from_parameters({"database": "x.db", **values})  # names and types, before any run
    return values


def _in_flow(database: Path, call: Callable[[], T]) -> T:
    """Run one of liteshift's flows on the configured API (or an embedded one)."""
    from liteshift.core.db import check_is_sqlite_file

    check_is_sqlite_file(database)  # one message, before Prefect starts, for a wrong path
    return _on_api(call)


def _on_api(call: Callable[[], T]) -> T:
    """call() with Prefect pointed at the configured API (or an embedded one). Prefect reads its
    settings when imported, so it is imported only once the API is chosen, while an embedded one
    boots; call() imports the flow it runs."""
    from liteshift.flows.runtime import command_settings, configure_prefect, connect_api

    configure_prefect()
    api = connect_api()
    import prefect  # noqa: F401  (the slow import, overlapped with the API's start)

    api.wait()
    with command_settings(api):
        return call()


if __name__ == "__main__":
    sys.exit(main())
