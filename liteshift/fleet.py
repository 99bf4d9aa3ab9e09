"""A fleet of databases: the manifest, the inventory, the plan of waves, and the halt rule.

Plain Python, no Prefect: the migrate-fleet flow reads a manifest, finds each host's databases,
writes one plan per fleet id (so a resumed run keeps its waves), starts a `migrate-database` run
per target on its host's queue, and asks should_halt() after each look at their states.

    migrations = "migrations"          # optional, relative to this file

    [hosts.db-1]
    paths = ["/srv/app/*.db", "tenants/**/*.db"]
    queue = "liteshift-db-1"           # optional: the default
    inventory = false                  # optional: true globs on the host itself
"""

from __future__ import annotations

import difflib
import glob
import hashlib
import itertools
import json
import os
import re
import shlex
import tempfile
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

from liteshift.errors import EXIT_INCOMPLETE, BadInput, MigrationError

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
FLEET_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,40}$")
TOP_KEYS = ("hosts", "migrations")
HOST_KEYS = ("inventory", "paths", "queue")
EXAMPLE_HOST = '[hosts.db-1] with paths = ["/srv/app/*.db"]'
WAVES_HINT = (
    "write increasing cumulative percentages of the targets left after the canary, "
    "ending at 100%, like 5%,25%,100%"
)
# SQLite's companions and liteshift's own files beside a database: never a target of their own.
SKIP_SUFFIXES = ("-wal", "-shm", "-journal", ".partial")
BACKUP_MARK = ".backup-"
# A failure rate over one or two finished runs is noise (1 of 1 is 100%): max_failures covers those.
MIN_FINISHED_FOR_RATE = 5


class ManifestInvalid(BadInput):
    """The fleet manifest, or what it finds on disk, cannot make a fleet; nothing was started."""


class PlanInvalid(BadInput):
    """The fleet's options (fleet id, canary, waves, thresholds) cannot make a plan; nothing was started."""


@dataclass(frozen=True)
class Host:
    """One [hosts.NAME] table: where its databases are and the work queue that reaches it."""

    name: str
    paths: tuple[str, ...]
    queue: str
    inventory: bool = False


@dataclass(frozen=True)
class Manifest:
    """A parsed fleet manifest; path is resolved, migrations_dir absolute when given."""

    path: Path
    hosts: tuple[Host, ...]
    migrations_dir: str | None = None


def _bad(path: Path, key: str, why: str, hint: str) -> ManifestInvalid:
    return ManifestInvalid(f"Invalid {key} in manifest {path}", why, hint)


def _unknown(path: Path, key: str, known: Sequence[str], where: str) -> ManifestInvalid:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"remove it; {where} knows only {', '.join(known)}"
    return ManifestInvalid(
        f"Unknown key {key} in manifest {path}", f"{where} knows only {', '.join(known)}", hint
    )


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ManifestInvalid(
            f"Manifest {path} cannot be read",
            exc.strerror or str(exc),
            "pass --manifest with the path of the fleet's TOML file",
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ManifestInvalid(
            f"Manifest {path} is not valid TOML", str(exc), "fix the line it names"
        ) from None


def _paths(path: Path, name: str, raw: dict[str, Any], inventory: bool) -> tuple[str, ...]:
    key = f"hosts.{name}.paths"
    example = f'paths = ["/srv/app/*.db", "tenants/**/*.db"] under [hosts.{name}]'
    if "paths" not in raw:
        raise _bad(path, key, "every host needs the glob patterns of its databases", f"write {example}")
    value = raw["paths"]
    if not isinstance(value, list) or not all(isinstance(p, str) and p.strip() for p in value):
        raise _bad(path, key, "it must be a list of non-empty glob patterns", f"write {example}")
    if not value:
        raise _bad(path, key, "it is an empty list, so the host has no database", f"write {example}")
    relative = [p for p in value if not os.path.isabs(os.path.expanduser(p))]
    if inventory and relative:
        raise _bad(
            path,
            key,
            f"{relative[0]!r} is relative, but an inventory host globs its own disk, where this "
            "manifest's directory may not exist",
            "write absolute patterns for an inventory host",
        )
    return tuple(value)


def _host(path: Path, name: str, raw: Any) -> Host:
    if not NAME_RE.fullmatch(name):
        raise _bad(
            path,
            f"host name {name!r}",
            "it becomes a work-queue name and a tag, so it holds only lowercase letters, digits and "
            "dashes, and starts with a letter or a digit",
            "rename the table, like [hosts.db-1]",
        )
    if not isinstance(raw, dict):
        raise _bad(path, f"hosts.{name}", "a host must be a table", f"write {EXAMPLE_HOST}")
    for key in raw:
        if key not in HOST_KEYS:
            raise _unknown(path, f"hosts.{name}.{key}", HOST_KEYS, "a host")
    inventory = raw.get("inventory", False)
    if not isinstance(inventory, bool):
        raise _bad(path, f"hosts.{name}.inventory", "it must be true or false", "write inventory = true")
    queue = raw.get("queue", f"liteshift-{name}")
    if not isinstance(queue, str) or not queue.strip():
        raise _bad(
            path,
            f"hosts.{name}.queue",
            "it must be a non-empty work-queue name",
            f'leave it out for the default "liteshift-{name}"',
        )
    return Host(name, _paths(path, name, raw, inventory), queue, inventory)


def _migrations(path: Path, raw: dict[str, Any]) -> str | None:
    value = raw.get("migrations")
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _bad(
            path,
            "migrations",
            "it must be a directory path",
            'write migrations = "migrations", or leave it out',
        )
    return os.path.normpath(os.path.join(path.parent, os.path.expanduser(value)))


def _one_host_per_queue(path: Path, hosts: Sequence[Host]) -> None:
    seen: dict[str, str] = {}
    for host in hosts:
        if host.queue in seen:
            raise ManifestInvalid(
                f"Hosts {seen[host.queue]} and {host.name} share the work queue {host.queue!r} "
                f"in manifest {path}",
                "a queue is how a run reaches its host, and the workers of one queue compete for its runs",
                "give each host its own queue, or leave queue out for liteshift-NAME",
            )
        seen[host.queue] = host.name


def load_manifest(path: Path) -> Manifest:
    """Read and check a fleet manifest, or raise one ManifestInvalid naming the file and the key."""
    path = Path(path).expanduser().resolve()
    raw = _read_toml(path)
    for key in raw:
        if key not in TOP_KEYS:
            raise _unknown(path, key, TOP_KEYS, "the manifest")
    tables = raw.get("hosts")
    if not isinstance(tables, dict) or not tables:
        raise _bad(path, "hosts", "the manifest names no host", f"add a table per host, like {EXAMPLE_HOST}")
    hosts = tuple(_host(path, name, value) for name, value in tables.items())
    _one_host_per_queue(path, hosts)
    return Manifest(path, hosts, _migrations(path, raw))


@dataclass(frozen=True)
class Target:
    """One database of the fleet: its host and absolute path, and the queue that reaches it."""

    key: str
    host: str
    path: str
    queue: str


def _skipped(name: str) -> bool:
    # The -wal/-shm of a database are part of it; backups and partial copies are liteshift's own.
    return name.endswith(SKIP_SUFFIXES) or BACKUP_MARK in name


def glob_paths(patterns: Sequence[str], base: Path) -> list[str]:
    """Resolved paths of the regular files the patterns match (relative ones under base), sorted."""
    found: set[str] = set()
    for pattern in patterns:
        expanded = os.path.expanduser(pattern)
        # The base is a directory name, not a pattern: a '[' in it must match itself.
        full = expanded if os.path.isabs(expanded) else os.path.join(glob.escape(str(base)), expanded)
        for match in glob.glob(full, recursive=True):
            real = os.path.realpath(match)
            names = (os.path.basename(match), os.path.basename(real))
            if os.path.isfile(real) and not any(_skipped(n) for n in names):
                found.add(real)
    return sorted(found)


def _refuse_shared(manifest: Manifest, found: dict[str, list[str]]) -> None:
    # Hosts that are globbed here share this disk: one file under two of them would be migrated twice.
    # Inventory hosts glob their own disks, where the same path is another file.
    owner: dict[str, str] = {}
    for host in manifest.hosts:
        if host.inventory:
            continue
        for p in found[host.name]:
            if p in owner:
                raise ManifestInvalid(
                    f"{p} is found under both hosts {owner[p]} and {host.name} in manifest {manifest.path}",
                    "a database belongs to one host, whose worker alone may migrate it",
                    f"narrow the paths of hosts.{owner[p]} or hosts.{host.name} so that only one matches it",
                )
            owner[p] = host.name


def inventory(manifest: Manifest, globber: Callable[[Host], list[str]] | None = None) -> list[Target]:
    """Every host's databases as targets, in manifest order; a host that finds none is refused."""
    base = manifest.path.parent
    found: dict[str, list[str]] = {}
    for host in manifest.hosts:
        paths = globber(host) if globber is not None else glob_paths(host.paths, base)
        if not paths:
            raise _bad(
                manifest.path,
                f"hosts.{host.name}.paths",
                f"no file matches {', '.join(host.paths)}"
                + (" on that host" if host.inventory else f" (relative patterns are under {base})"),
                "fix the patterns, or remove the host from the manifest",
            )
        found[host.name] = sorted(set(paths))
    _refuse_shared(manifest, found)
    return [
        Target(f"{host.name}:{p}", host.name, p, host.queue)
        for host in manifest.hosts
        for p in found[host.name]
    ]


@dataclass
class Plan:
    """Which targets run in the canary and in each wave, and when the waves halt."""

    fleet_id: str
    created_at: str
    manifest: str
    migrations_dir: str
    targets: list[Target]
    canary: list[str]
    waves: list[list[str]]
    max_failures: int | None
    max_failure_rate: float | None

    def digest(self) -> str:
        """sha256 of the canonical JSON of the plan, created_at left out (a resume re-plans later)."""
        data = {k: v for k, v in asdict(self).items() if k != "created_at"}
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def to_json(self) -> str:
        """The plan as the file keeps it."""
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Plan:
        """Read a plan back from to_json's text; KeyError/TypeError/ValueError when it is not one."""
        data = json.loads(text)
        data["targets"] = [Target(**t) for t in data["targets"]]
        return cls(**{f.name: data[f.name] for f in fields(cls)})

    def stages(self) -> list[tuple[str, list[str]]]:
        """("canary", keys), then ("wave 1", keys), ... in order; the canary may be empty."""
        return [("canary", self.canary), *((f"wave {i}", keys) for i, keys in enumerate(self.waves, 1))]

    def wave_of(self, key: str) -> str:
        """The stage a target runs in: "canary", "wave 1", ..."""
        for name, keys in self.stages():
            if key in keys:
                return name
        raise ValueError(f"{key!r} is not a target of fleet {self.fleet_id}")


def _check_fleet_id(fleet_id: str) -> None:
    if not FLEET_ID_RE.fullmatch(fleet_id):
        raise PlanInvalid(
            f"Invalid fleet id {fleet_id!r}",
            "it becomes a tag and a file name, so it holds 1 to 41 lowercase letters, digits and dashes, "
            "starting with a letter or a digit",
            "pass --fleet-id like add-index-2024-06",
        )


def _percent(item: str, text: str) -> int:
    value = item.strip().removesuffix("%").strip()
    if not re.fullmatch(r"[0-9]+", value):
        why = f"{item.strip()!r} is not a whole percentage"
    elif not 1 <= int(value) <= 100:
        why = f"{item.strip()!r} is outside 1%..100%"
    else:
        return int(value)
    raise PlanInvalid(f"Invalid waves {text!r}", why, WAVES_HINT)


def parse_waves(waves: Sequence[str]) -> list[int]:
    """Cumulative percentages from "5%", "25%", "100%"; PlanInvalid saying what is wrong otherwise."""
    # "5%,25%,100%" as one string or as items: the CLI may pass either.
    items = [part for w in ([waves] if isinstance(waves, str) else waves) for part in w.split(",")]
    text = ",".join(i.strip() for i in items)
    if not text:
        raise PlanInvalid("Invalid waves ''", "no wave is given", WAVES_HINT)
    percents = [_percent(i, text) for i in items]
    for before, after in itertools.pairwise(percents):
        if after <= before:
            raise PlanInvalid(
                f"Invalid waves {text!r}",
                f"{after}% comes after {before}%; the percentages are cumulative, so each must be larger",
                WAVES_HINT,
            )
    if percents[-1] != 100:
        raise PlanInvalid(
            f"Invalid waves {text!r}",
            f"the last wave is {percents[-1]}%, so the other {100 - percents[-1]}% would never run",
            WAVES_HINT,
        )
    return percents


def spread(targets: Sequence[Target]) -> list[Target]:
    """Targets sorted by key, then dealt round-robin by host, so any first N touch the most hosts."""
    by_host: dict[str, list[Target]] = {}
    for t in sorted(targets, key=lambda t: t.key):
        by_host.setdefault(t.host, []).append(t)
    rounds = max((len(ts) for ts in by_host.values()), default=0)
    return [ts[i] for i in range(rounds) for ts in by_host.values() if i < len(ts)]


def _canary(order: list[Target], canary: int | list[str]) -> list[str]:
    if isinstance(canary, int):
        if canary < 0:
            raise PlanInvalid(
                f"Invalid canary {canary}", "it is negative", "pass --canary N (0: none) or a list of keys"
            )
        return [t.key for t in order[:canary]]
    known = {t.key for t in order}
    unknown = [k for k in canary if k not in known]
    if unknown:
        examples = ", ".join(t.key for t in order[:2])
        raise PlanInvalid(
            f"Unknown canary target {unknown[0]!r}",
            f"it is not among the {len(order)} targets the manifest finds",
            f"name targets as HOST:PATH, like {examples}",
        )
    return list(dict.fromkeys(canary))


def _split(keys: list[str], percents: list[int]) -> list[list[str]]:
    # Floor keeps an early wave within its percentage; the max() gives each wave at least one target.
    waves, start = [], 0
    for p in percents:
        end = min(len(keys), max(start + 1, len(keys) * p // 100))
        waves.append(keys[start:end])
        start = end
    return [w for w in waves if w]


def _check_thresholds(max_failures: int | None, max_failure_rate: float | None) -> None:
    if max_failures is not None and max_failures < 1:
        raise PlanInvalid(
            f"Invalid max_failures {max_failures}",
            "it must be at least 1",
            "pass --max-failures N to halt after N failed databases, or leave it out",
        )
    if max_failure_rate is not None and not 0 < max_failure_rate <= 1:
        raise PlanInvalid(
            f"Invalid max_failure_rate {max_failure_rate}",
            "it is a fraction of the finished migrations, above 0 and at most 1",
            "write 0.05 for 5%, or leave it out",
        )


def make_plan(
    fleet_id: str,
    targets: list[Target],
    *,
    canary: int | list[str] = 1,
    waves: Sequence[str] = ("100%",),
    max_failures: int | None = None,
    max_failure_rate: float | None = None,
    migrations_dir: str = "",
    manifest: str = "",
) -> Plan:
    """The canary, then waves of cumulative percentages of the remaining targets; each target once."""
    _check_fleet_id(fleet_id)
    percents = parse_waves(waves)
    _check_thresholds(max_failures, max_failure_rate)
    keys = [t.key for t in targets]
    if len(set(keys)) != len(keys):
        twice = next(k for k in keys if keys.count(k) > 1)
        raise PlanInvalid(
            f"Target {twice} is listed twice", "each database runs once per fleet", "pass each target once"
        )
    order = spread(targets)
    first = _canary(order, canary)
    chosen = set(first)
    rest = [t.key for t in order if t.key not in chosen]
    return Plan(
        fleet_id=fleet_id,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        manifest=manifest,
        migrations_dir=migrations_dir,
        targets=sorted(targets, key=lambda t: t.key),
        canary=first,
        waves=_split(rest, percents),
        max_failures=max_failures,
        max_failure_rate=max_failure_rate,
    )


def plan_file(directory: Path, fleet_id: str) -> Path:
    """Where the plan of a fleet id is kept."""
    return Path(directory) / f"fleet-{fleet_id}.json"


def read_plan(directory: Path, fleet_id: str) -> Plan | None:
    """The plan kept for fleet_id, or None when it has none yet."""
    path = plan_file(directory, fleet_id)
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        return None
    try:
        return Plan.from_json(text)
    except (ValueError, KeyError, TypeError) as exc:
        raise ManifestInvalid(
            f"The plan file {path} cannot be read",
            f"{type(exc).__name__}: {exc}",
            f"delete {path} to plan fleet {fleet_id} again, or use a new --fleet-id",
        ) from None


def _changes(old: Plan, new: Plan) -> str:
    old_keys, new_keys = {t.key for t in old.targets}, {t.key for t in new.targets}
    added, removed = len(new_keys - old_keys), len(old_keys - new_keys)
    parts = [f"targets ({added} added, {removed} removed)"] if added or removed else []
    names = [f.name for f in fields(Plan) if f.name not in ("created_at", "targets")]
    parts += [n for n in names if getattr(old, n) != getattr(new, n)]
    return ", ".join(parts) or "targets (their queues)"


def _write_new(path: Path, text: str) -> bool:
    """Create path with text, atomically and durably; False when it already exists (left as it is)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        # link(), unlike replace(), never overwrites: of two planners starting one fleet, one wins.
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
    finally:
        os.unlink(tmp)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the new name survives a power cut
    finally:
        os.close(dir_fd)
    return True


def write_plan(plan: Plan, directory: Path) -> Path:
    """Keep the plan as fleet-ID.json; the same plan again is a resume, a different one is refused."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = plan_file(directory, plan.fleet_id)
    if _write_new(path, plan.to_json()):
        return path
    kept = read_plan(directory, plan.fleet_id)
    if kept is None:  # deleted between the two looks: try again
        return write_plan(plan, directory)
    if kept.digest() != plan.digest():
        raise ManifestInvalid(
            f"The plan of fleet {plan.fleet_id} changed since it started",
            f"{path} has other {_changes(kept, plan)}",
            f"use a new --fleet-id, or delete {path} to plan fleet {plan.fleet_id} again",
        )
    return path


Outcome = Literal["completed", "refused", "deferred", "failed", "crashed", "unreached", "running", "pending"]
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)

# Exceptions of a migrate-database run that say "not now" (the application or the window), not
# "this migration is wrong": nothing was written, a later fleet run will try again.
DEFERRED_ERRORS = frozenset({"OutsideWindow", "WindowTooShort", "DatabaseLocked", "LockHeld", "DatabaseBusy"})
# Refusals before anything was written: the input, the host, or a person said no.
REFUSED_ERRORS = frozenset(
    {
        "BadInput",
        "WrongHost",
        "PathNotAllowed",
        "ChecksumDrift",
        "TrackingTooNew",
        "WindowInvalid",
        "ManifestInvalid",
        "PlanInvalid",
        "ApprovalDenied",
        "ApprovalTimedOut",
    }
)
# Shown for the docs; any exception name in neither set above is a failure too. A dry run that
# fails, or a down that does not undo its up, is refused before writing, but it says the migration
# itself is wrong for this database: exactly what a canary is there to catch.
FAILED_ERRORS = frozenset(
    {"MigrationError", "CheckFailed", "RollbackRefused", "DownFailed", "DryRunFailed", "NotReversible"}
)
EXCEPTION_PREFIX = "Flow run encountered an exception:"
STATE_OUTCOMES: dict[str, Outcome] = {
    "COMPLETED": "completed",
    "CRASHED": "crashed",
    "CANCELLED": "unreached",
    "CANCELLING": "unreached",
    "SCHEDULED": "pending",  # also Late, AwaitingRetry, AwaitingConcurrencySlot
    "PENDING": "pending",
    "PAUSED": "pending",  # also Suspended: waiting for an approval
    "RUNNING": "running",
}


def exception_name(message: str | None) -> str | None:
    """The exception class a Failed state's message names, or None when it names none."""
    text = (message or "").strip()
    if not text.startswith(EXCEPTION_PREFIX):
        return None
    name = text[len(EXCEPTION_PREFIX) :].strip().split(":", 1)[0].strip()
    return name.rsplit(".", 1)[-1] if name.replace(".", "").replace("_", "").isalnum() else None


def classify(state_type: str, state_name: str, message: str | None) -> Outcome:
    """The outcome of a child migrate-database run from its Prefect state type, name and message."""
    kind = state_type.rsplit(".", 1)[-1].upper()  # "FAILED" or "StateType.FAILED"
    if kind in STATE_OUTCOMES:
        return STATE_OUTCOMES[kind]
    if kind != "FAILED":
        raise ValueError(f"unknown Prefect state type {state_type!r} (state {state_name!r})")
    name = exception_name(message)
    if name in DEFERRED_ERRORS:
        return "deferred"
    if name in REFUSED_ERRORS:
        return "refused"
    return "failed"  # a check failed, a rollback stopped, or we cannot tell: treat it as the worst


@dataclass
class Tally:
    """How many targets have each outcome."""

    completed: int = 0
    refused: int = 0
    deferred: int = 0
    failed: int = 0
    crashed: int = 0
    unreached: int = 0
    running: int = 0
    pending: int = 0

    @classmethod
    def of(cls, outcomes: Iterable[Outcome]) -> Tally:
        """Count outcomes."""
        tally = cls()
        for outcome in outcomes:
            setattr(tally, outcome, getattr(tally, outcome) + 1)
        return tally

    def failures(self) -> int:
        """Failed runs. A first crash is retried by the flow, which records a second one as failed."""
        return self.failed

    def finished(self) -> int:
        """Runs that tried the migration to an end; refused and deferred ones never started it."""
        return self.completed + self.failed


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _names(keys: list[str], outcomes: dict[str, Outcome]) -> str:
    shown = ", ".join(f"{k} {outcomes[k]}" for k in keys[:3])
    return shown + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def should_halt(plan: Plan, wave: str, outcomes: dict[str, Outcome]) -> str | None:
    """None to go on, else the reason to stop before the next wave starts, as one sentence."""
    stages = plan.stages()
    names = [name for name, _ in stages]
    if wave not in names:
        raise ValueError(f"{wave!r} is not a stage of fleet {plan.fleet_id}: {', '.join(names)}")
    if wave == "canary":
        bad = [k for k in plan.canary if outcomes.get(k) in ("failed", "crashed")]
        if bad:
            shown = _names(bad, outcomes)
            return f"The canary failed on {len(bad)} of {_count(len(plan.canary), 'database')} ({shown})."
        if plan.canary and not any(outcomes.get(k) == "completed" for k in plan.canary):
            shown = _names(list(plan.canary), outcomes)
            return (
                f"No canary database completed ({shown}): the waves would start without evidence "
                "that the migration works."
            )
        return None
    so_far = [k for _, keys in stages[: names.index(wave) + 1] for k in keys]
    tally = Tally.of(outcomes[k] for k in so_far if k in outcomes)
    scope = f"up to {wave}" if plan.canary or wave != "wave 1" else "in wave 1"
    failures, finished = tally.failures(), tally.finished()
    if plan.max_failures is not None and failures >= plan.max_failures:
        return (
            f"{_count(failures, 'database')} failed {scope}, which reaches max_failures {plan.max_failures}."
        )
    rate = plan.max_failure_rate
    if rate is not None and finished >= MIN_FINISHED_FOR_RATE and failures / finished >= rate:
        return (
            f"{failures} of {finished} finished migrations failed {scope} ({failures / finished:.0%}), "
            f"at or above max_failure_rate {rate:g}."
        )
    return None


def resume_hint(fleet_id: str, manifest: str) -> str:
    """The command that resumes a fleet: same manifest, same fleet id."""
    return f"liteshift fleet run --manifest {shlex.quote(manifest)} --fleet-id {fleet_id}"


# What a resume starts again by itself, and what only a resume with --retry-failed does.
RETRIED: tuple[Outcome, ...] = ("crashed", "deferred", "unreached")
NEED_A_PERSON: tuple[Outcome, ...] = ("refused", "failed")


class FleetIncomplete(MigrationError):
    """Every wave ran and nothing failed, but some databases are not migrated (refused, deferred,
    unreached). Exit 5: a fleet that skipped databases must not look like a success."""

    exit_code = EXIT_INCOMPLETE


def unfinished(fleet_id: str, manifest: str, counts: dict[str, int]) -> MigrationError | None:
    """None when every database completed; else what is left and how to finish it, as the error
    `fleet run` ends with: exit 1 when any failed, exit 5 when none did."""
    left = {k: n for k, n in counts.items() if k != "completed" and n}
    if not left:
        return None
    total = sum(counts.values())
    order = list(get_args(Outcome))
    why = ", ".join(f"{left[k]} {k}" for k in sorted(left, key=order.index))
    status = f"liteshift fleet status --manifest {shlex.quote(manifest)} --fleet-id {fleet_id}"
    steps = [f"see each one's error with: {status}", f"then resume with: {resume_hint(fleet_id, manifest)}"]
    if any(k in left for k in NEED_A_PERSON):
        steps[-1] += " --retry-failed (once the refused and failed ones are fixed)"
    what = f"Fleet {fleet_id} finished with {sum(left.values())} of {_count(total, 'database')} not migrated"
    if "failed" in left:
        return MigrationError(what, why, "; ".join(steps))
    return FleetIncomplete(what, why, "; ".join(steps))
