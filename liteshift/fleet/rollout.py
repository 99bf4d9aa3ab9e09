"""A fleet's rollout plan: canary and waves, fixed per fleet id in a plan file a resumed run keeps."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

from liteshift.core.errors import BadInput
from liteshift.fleet.manifest import ManifestInvalid, Target

FLEET_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,40}$")


WAVES_HINT = (
    "write increasing cumulative percentages of the targets left after the canary, "
    "ending at 100%, like 5%,25%,100%"
)


class PlanInvalid(BadInput):
    """The fleet's options (fleet id, canary, waves, thresholds) cannot make a plan; nothing was started."""


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


def check_resume(saved: Plan, targets: list[Target], manifest: str) -> None:
    """A resume goes on only over the databases its plan was made for: refuse, before anything
    starts, when the manifest now yields others (globs matching new files, a host added)."""
    kept, now = {t.key for t in saved.targets}, {t.key for t in targets}
    if kept == now:
        return
    added, gone = sorted(now - kept), sorted(kept - now)

    def some(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

    differs = [f"{len(added)} the plan does not have ({some(added)})"] if added else []
    differs += [f"not {len(gone)} it has ({some(gone)})"] if gone else []
    raise PlanInvalid(
        f"Fleet {saved.fleet_id} was planned for other databases",
        f"{manifest} now yields {' and '.join(differs)}; a resume only finishes the plan of "
        f"{saved.created_at}",
        f"start a new fleet with another --fleet-id, or plan fleet {saved.fleet_id} again over what "
        "the manifest yields now with --replan (databases it already migrated are not migrated twice)",
    )


def replace_plan(plan: Plan, directory: Path) -> Path:
    """Keep a new plan for a fleet id over its old one (--replan), atomically and durably."""
    path = plan_file(Path(directory), plan.fleet_id)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(plan.to_json())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path
