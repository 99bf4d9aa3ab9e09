"""The fleet's plain-Python core: manifest, inventory, plan, plan file, outcomes and the halt rule."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from liteshift.core.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INCOMPLETE
from liteshift.fleet.manifest import (
    Host,
    Manifest,
    ManifestInvalid,
    Target,
    glob_paths,
    inventory,
    load_manifest,
)
from liteshift.fleet.outcomes import (
    MIN_FINISHED_FOR_RATE,
    OUTCOMES,
    FleetIncomplete,
    Outcome,
    Tally,
    classify,
    error_family,
    resume_hint,
    should_halt,
    unfinished,
)
from liteshift.fleet.rollout import Plan, PlanInvalid, make_plan, read_plan, write_plan
from liteshift.flows import fleet as fleet_flow  # imports the whole error family, as the flow does

# What a child run's exception means for the fleet, by class (each class's own `outcome`).
DEFERRED_ERRORS = ("OutsideWindow", "WindowTooShort", "DatabaseLocked", "LockHeld", "DatabaseBusy")
REFUSED_ERRORS = (
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
)
FAILED_ERRORS = (
    "MigrationError",
    "CheckFailed",
    "RollbackRefused",
    "DownFailed",
    "DryRunFailed",
    "NotReversible",
)

WAVES_TRY = (
    "Try: write increasing cumulative percentages of the targets left after the canary, "
    "ending at 100%, like 5%,25%,100%"
)


def write_manifest(directory: Path, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "fleet.toml"
    path.write_text(text, "utf-8")
    return path


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"SQLite format 3\x00")
    return path


def targets(hosts: dict[str, int]) -> list[Target]:
    """Targets without files: n databases per host."""
    return [
        Target(f"{h}:/srv/{h}/{i:03}.db", h, f"/srv/{h}/{i:03}.db", f"liteshift-{h}")
        for h, n in hosts.items()
        for i in range(n)
    ]


# --- manifest ---------------------------------------------------------------------------------


def test_manifest_parses_with_defaults(tmp_path: Path) -> None:
    path = write_manifest(
        tmp_path / "fleet",
        'migrations = "../migrations"\n'
        '[hosts.db-1]\npaths = ["data/*.db"]\n'
        '[hosts.db-2]\npaths = ["/srv/a/*.db", "/srv/b/**/*.db"]\nqueue = "q2"\ninventory = true\n',
    )
    assert load_manifest(path) == Manifest(
        path=path.resolve(),
        hosts=(
            Host("db-1", ("data/*.db",), "liteshift-db-1", False),
            Host("db-2", ("/srv/a/*.db", "/srv/b/**/*.db"), "q2", True),
        ),
        migrations_dir=str(tmp_path.resolve() / "migrations"),
    )


def test_manifest_without_migrations_leaves_it_none(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, '[hosts.a]\npaths = ["*.db"]\n')
    assert load_manifest(path).migrations_dir is None


HOST_EXAMPLE = 'paths = ["/srv/app/*.db", "tenants/**/*.db"] under [hosts.a]'

REFUSALS = {
    "unknown top key": (
        '[host.a]\npaths = ["*.db"]\n',
        "Unknown key host in manifest {p}: the manifest knows only hosts, migrations. "
        "Try: did you mean 'hosts'?",
    ),
    "unknown top key, no close match": (
        'color = "blue"\n[hosts.a]\npaths = ["*.db"]\n',
        "Unknown key color in manifest {p}: the manifest knows only hosts, migrations. "
        "Try: remove it; the manifest knows only hosts, migrations",
    ),
    "no hosts": (
        'migrations = "m"\n',
        "Invalid hosts in manifest {p}: the manifest names no host. "
        'Try: add a table per host, like [hosts.db-1] with paths = ["/srv/app/*.db"]',
    ),
    "empty hosts": (
        "[hosts]\n",
        "Invalid hosts in manifest {p}: the manifest names no host. "
        'Try: add a table per host, like [hosts.db-1] with paths = ["/srv/app/*.db"]',
    ),
    "bad host name": (
        '[hosts.DB_1]\npaths = ["*.db"]\n',
        "Invalid host name 'DB_1' in manifest {p}: it becomes a work-queue name and a tag, so it holds "
        "only lowercase letters, digits and dashes, and starts with a letter or a digit. "
        "Try: rename the table, like [hosts.db-1]",
    ),
    "host name starting with a dash": (
        '[hosts.-a]\npaths = ["*.db"]\n',
        "Invalid host name '-a' in manifest {p}: it becomes a work-queue name and a tag, so it holds "
        "only lowercase letters, digits and dashes, and starts with a letter or a digit. "
        "Try: rename the table, like [hosts.db-1]",
    ),
    "host not a table": (
        'hosts = {a = "x"}\n',
        "Invalid hosts.a in manifest {p}: a host must be a table. "
        'Try: write [hosts.db-1] with paths = ["/srv/app/*.db"]',
    ),
    "unknown host key": (
        '[hosts.a]\npath = ["*.db"]\n',
        "Unknown key hosts.a.path in manifest {p}: a host knows only inventory, paths, queue. "
        "Try: did you mean 'paths'?",
    ),
    "missing paths": (
        '[hosts.a]\nqueue = "q"\n',
        "Invalid hosts.a.paths in manifest {p}: every host needs the glob patterns of its databases. "
        f"Try: write {HOST_EXAMPLE}",
    ),
    "empty paths": (
        "[hosts.a]\npaths = []\n",
        "Invalid hosts.a.paths in manifest {p}: it is an empty list, so the host has no database. "
        f"Try: write {HOST_EXAMPLE}",
    ),
    "paths as a string": (
        '[hosts.a]\npaths = "*.db"\n',
        "Invalid hosts.a.paths in manifest {p}: it must be a list of non-empty glob patterns. "
        f"Try: write {HOST_EXAMPLE}",
    ),
    "an empty pattern": (
        '[hosts.a]\npaths = ["*.db", " "]\n',
        "Invalid hosts.a.paths in manifest {p}: it must be a list of non-empty glob patterns. "
        f"Try: write {HOST_EXAMPLE}",
    ),
    "relative pattern on an inventory host": (
        '[hosts.a]\npaths = ["/srv/*.db", "data/*.db"]\ninventory = true\n',
        "Invalid hosts.a.paths in manifest {p}: 'data/*.db' is relative, but an inventory host globs its "
        "own disk, where this manifest's directory may not exist. "
        "Try: write absolute patterns for an inventory host",
    ),
    "inventory not a boolean": (
        '[hosts.a]\npaths = ["*.db"]\ninventory = "yes"\n',
        "Invalid hosts.a.inventory in manifest {p}: it must be true or false. Try: write inventory = true",
    ),
    "empty queue": (
        '[hosts.a]\npaths = ["*.db"]\nqueue = ""\n',
        "Invalid hosts.a.queue in manifest {p}: it must be a non-empty work-queue name. "
        'Try: leave it out for the default "liteshift-a"',
    ),
    "two hosts on one queue": (
        '[hosts.a]\npaths = ["a/*.db"]\n[hosts.b]\npaths = ["b/*.db"]\nqueue = "liteshift-a"\n',
        "Hosts a and b share the work queue 'liteshift-a' in manifest {p}: a queue is how a run reaches "
        "its host, and the workers of one queue compete for its runs. "
        "Try: give each host its own queue, or leave queue out for liteshift-NAME",
    ),
    "migrations not a string": (
        'migrations = 3\n[hosts.a]\npaths = ["*.db"]\n',
        "Invalid migrations in manifest {p}: it must be a directory path. "
        'Try: write migrations = "migrations", or leave it out',
    ),
}


@pytest.mark.parametrize("text,message", REFUSALS.values(), ids=REFUSALS.keys())
def test_manifest_refusals(tmp_path: Path, text: str, message: str) -> None:
    path = write_manifest(tmp_path, text)
    with pytest.raises(ManifestInvalid) as err:
        load_manifest(path)
    assert str(err.value) == message.format(p=path.resolve())
    assert err.value.exit_code == EXIT_BAD_INPUT


def test_manifest_not_toml(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, "[hosts.a\n")
    with pytest.raises(ManifestInvalid) as err:
        load_manifest(path)
    assert str(err.value).startswith(f"Manifest {path.resolve()} is not valid TOML: ")
    assert str(err.value).endswith("(at line 1, column 9). Try: fix the line it names")


def test_manifest_missing(tmp_path: Path) -> None:
    with pytest.raises(ManifestInvalid) as err:
        load_manifest(tmp_path / "nope.toml")
    assert str(err.value) == (
        f"Manifest {tmp_path.resolve() / 'nope.toml'} cannot be read: No such file or directory. "
        "Try: pass --manifest with the path of the fleet's TOML file"
    )


# --- globs and inventory -------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A manifest directory with databases, their companions, backups, and decoys."""
    base = tmp_path / "site"
    for name in (
        "data/app.db",
        "data/app.db-wal",
        "data/app.db-shm",
        "data/app.db-journal",
        "data/app.db.backup-20240101_020000",
        "data/app.db.backup-20240101_020000-1",
        "data/app.db.backup-20240102_020000.partial",
        "data/other.db",
        "tenants/t0.db",
        "tenants/a/t1.db",
        "tenants/b/c/t2.db",
        "tenants/b/c/t2.db-wal",
    ):
        touch(base / name)
    (base / "data" / "dir.db").mkdir()  # a directory is not a database
    os.symlink(base / "data" / "app.db", base / "data" / "alias.db")  # the same file twice
    return base


def test_glob_relative_recursive_and_skips(tree: Path) -> None:
    found = glob_paths(["data/*.db", "tenants/**/*.db", "data/app.db"], tree)
    real = tree.resolve()
    assert found == [
        str(real / "data/app.db"),
        str(real / "data/other.db"),
        str(real / "tenants/a/t1.db"),
        str(real / "tenants/b/c/t2.db"),
        str(real / "tenants/t0.db"),
    ]


def test_glob_absolute_pattern_ignores_base(tree: Path, tmp_path: Path) -> None:
    assert glob_paths([str(tree / "data" / "other.*")], tmp_path / "elsewhere") == [
        str(tree.resolve() / "data" / "other.db")
    ]


def test_glob_base_with_pattern_characters(tmp_path: Path) -> None:
    base = tmp_path / "site[1]"
    touch(base / "x.db")
    assert glob_paths(["*.db"], base) == [str(base.resolve() / "x.db")]


def test_inventory_targets_per_host(tree: Path) -> None:
    path = write_manifest(
        tree, '[hosts.b]\npaths = ["tenants/**/*.db"]\n[hosts.a]\npaths = ["data/*.db"]\nqueue = "qa"\n'
    )
    real = tree.resolve()
    assert inventory(load_manifest(path)) == [
        Target(f"b:{real}/tenants/a/t1.db", "b", f"{real}/tenants/a/t1.db", "liteshift-b"),
        Target(f"b:{real}/tenants/b/c/t2.db", "b", f"{real}/tenants/b/c/t2.db", "liteshift-b"),
        Target(f"b:{real}/tenants/t0.db", "b", f"{real}/tenants/t0.db", "liteshift-b"),
        Target(f"a:{real}/data/app.db", "a", f"{real}/data/app.db", "qa"),
        Target(f"a:{real}/data/other.db", "a", f"{real}/data/other.db", "qa"),
    ]


def test_a_path_under_two_hosts_is_refused(tree: Path) -> None:
    path = write_manifest(tree, '[hosts.a]\npaths = ["data/*.db"]\n[hosts.b]\npaths = ["data/o*.db"]\n')
    with pytest.raises(ManifestInvalid) as err:
        inventory(load_manifest(path))
    db = tree.resolve() / "data" / "other.db"
    assert str(err.value) == (
        f"{db} is found under both hosts a and b in manifest {path.resolve()}: a database belongs to one "
        "host, whose worker alone may migrate it. "
        "Try: narrow the paths of hosts.a or hosts.b so that only one matches it"
    )


def test_inventory_hosts_may_share_a_path(tmp_path: Path) -> None:
    # Each inventory host globs its own disk: /srv/app.db on two machines is two databases.
    path = write_manifest(
        tmp_path,
        '[hosts.a]\npaths = ["/srv/*.db"]\ninventory = true\n'
        '[hosts.b]\npaths = ["/srv/*.db"]\ninventory = true\n',
    )
    asked: list[str] = []

    def globber(host: Host) -> list[str]:
        asked.append(host.name)
        return ["/srv/app.db", "/srv/app.db"]

    found = inventory(load_manifest(path), globber)
    assert asked == ["a", "b"]
    assert [t.key for t in found] == ["a:/srv/app.db", "b:/srv/app.db"]
    assert [t.queue for t in found] == ["liteshift-a", "liteshift-b"]


def test_a_host_that_finds_nothing_is_refused(tree: Path) -> None:
    path = write_manifest(tree, '[hosts.a]\npaths = ["data/*.db"]\n[hosts.b]\npaths = ["dta/*.db"]\n')
    with pytest.raises(ManifestInvalid) as err:
        inventory(load_manifest(path))
    assert str(err.value) == (
        f"Invalid hosts.b.paths in manifest {path.resolve()}: no file matches dta/*.db "
        f"(relative patterns are under {tree.resolve()}). "
        "Try: fix the patterns, or remove the host from the manifest"
    )


# --- the plan ------------------------------------------------------------------------------------


def test_canary_count_spreads_over_hosts() -> None:
    fleet = targets({"c": 4, "a": 4, "b": 4})
    assert make_plan("f", fleet, canary=3).canary == ["a:/srv/a/000.db", "b:/srv/b/000.db", "c:/srv/c/000.db"]
    assert make_plan("f", fleet, canary=2).canary == ["a:/srv/a/000.db", "b:/srv/b/000.db"]
    assert make_plan("f", fleet, canary=4).canary == [
        "a:/srv/a/000.db",
        "b:/srv/b/000.db",
        "c:/srv/c/000.db",
        "a:/srv/a/001.db",
    ]


def test_canary_larger_than_the_fleet_takes_all() -> None:
    plan = make_plan("f", targets({"a": 2}), canary=5)
    assert plan.canary == ["a:/srv/a/000.db", "a:/srv/a/001.db"]
    assert plan.waves == []


def test_explicit_canary_and_unknown_key() -> None:
    fleet = targets({"a": 3, "b": 3})
    plan = make_plan("f", fleet, canary=["b:/srv/b/002.db", "a:/srv/a/001.db", "b:/srv/b/002.db"])
    assert plan.canary == ["b:/srv/b/002.db", "a:/srv/a/001.db"]
    assert "b:/srv/b/002.db" not in [k for w in plan.waves for k in w]
    with pytest.raises(PlanInvalid) as err:
        make_plan("f", fleet, canary=["a:/srv/a/000.db", "/srv/a/001.db"])
    assert str(err.value) == (
        "Unknown canary target '/srv/a/001.db': it is not among the 6 targets the manifest finds. "
        "Try: name targets as HOST:PATH, like a:/srv/a/000.db, b:/srv/b/000.db"
    )


def test_waves_over_200_targets() -> None:
    fleet = targets({"a": 100, "b": 60, "c": 40})
    # No canary: 5% of 200 = 10; 25% = 50, so 40 more; 100% = 200, so 150 more.
    plan = make_plan("f", fleet, canary=0, waves=("5%", "25%", "100%"))
    assert plan.canary == []
    assert should_halt(plan, "canary", {}) is None  # the flow asks after every stage, an empty one too
    assert should_halt(replace(plan, max_failures=1), "wave 1", {plan.waves[0][0]: "failed"}) == (
        "1 database failed in wave 1, which reaches max_failures 1."
    )
    assert [len(w) for w in plan.waves] == [10, 40, 150]
    # One canary leaves 199: 5% is 9.95, floored to 9; 25% is 49.75 -> 49, so 40 more; then 150.
    plan = make_plan("f", fleet, canary=1, waves=["5%,25%", "100%"])
    assert [len(w) for w in plan.waves] == [9, 40, 150]
    everyone = plan.canary + [k for w in plan.waves for k in w]
    assert Counter(everyone) == Counter(t.key for t in fleet)
    # The first wave is dealt round-robin too: it touches every host.
    assert {k.split(":")[0] for k in plan.waves[0]} == {"a", "b", "c"}


def test_small_fleet_gives_each_wave_one_and_drops_empty_ones() -> None:
    plan = make_plan("f", targets({"a": 3}), canary=1, waves=("5%", "25%", "100%"))
    # Two left after the canary: 5% and 25% of 2 floor to 0, raised to one each; nothing is left for 100%.
    assert plan.waves == [["a:/srv/a/001.db"], ["a:/srv/a/002.db"]]
    assert plan.wave_of("a:/srv/a/000.db") == "canary"
    assert plan.wave_of("a:/srv/a/002.db") == "wave 2"
    with pytest.raises(ValueError, match="is not a target of fleet f"):
        plan.wave_of("a:/nope.db")


BAD_WAVES = {
    "none": ([], "Invalid waves '': no wave is given"),
    "not a number": (["5%", "x", "100%"], "Invalid waves '5%,x,100%': 'x' is not a whole percentage"),
    "a fraction": (["2.5%", "100%"], "Invalid waves '2.5%,100%': '2.5%' is not a whole percentage"),
    "zero": (["0%", "100%"], "Invalid waves '0%,100%': '0%' is outside 1%..100%"),
    "above 100": (["50%", "101%"], "Invalid waves '50%,101%': '101%' is outside 1%..100%"),
    "decreasing": (
        ["25%", "10%", "100%"],
        "Invalid waves '25%,10%,100%': 10% comes after 25%; the percentages are cumulative, so each must "
        "be larger",
    ),
    "repeated": (
        ["50%", "50%", "100%"],
        "Invalid waves '50%,50%,100%': 50% comes after 50%; the percentages are cumulative, so each must "
        "be larger",
    ),
    "short of 100": (
        ["5%", "50%"],
        "Invalid waves '5%,50%': the last wave is 50%, so the other 50% would never run",
    ),
}


@pytest.mark.parametrize("waves,message", BAD_WAVES.values(), ids=BAD_WAVES.keys())
def test_bad_waves_refused(waves: list[str], message: str) -> None:
    with pytest.raises(PlanInvalid) as err:
        make_plan("f", targets({"a": 3}), waves=waves)
    assert str(err.value) == f"{message}. {WAVES_TRY}"


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (
            {"fleet_id": "Add_Index"},
            "Invalid fleet id 'Add_Index': it becomes a tag and a file name, so it holds 1 to 41 lowercase "
            "letters, digits and dashes, starting with a letter or a digit. "
            "Try: pass --fleet-id like add-index-2024-06",
        ),
        (
            {"fleet_id": "a" * 42},
            f"Invalid fleet id '{'a' * 42}': it becomes a tag and a file name, so it holds 1 to 41 lowercase "
            "letters, digits and dashes, starting with a letter or a digit. "
            "Try: pass --fleet-id like add-index-2024-06",
        ),
        (
            {"canary": -1},
            "Invalid canary -1: it is negative. Try: pass --canary N (0: none) or a list of keys",
        ),
        (
            {"max_failures": 0},
            "Invalid max_failures 0: it must be at least 1. "
            "Try: pass --max-failures N to halt after N failed databases, or leave it out",
        ),
        (
            {"max_failure_rate": 5.0},
            "Invalid max_failure_rate 5.0: it is a fraction of the finished migrations, above 0 and at "
            "most 1. Try: write 0.05 for 5%, or leave it out",
        ),
    ],
)
def test_bad_options_refused(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"fleet_id": "f", "targets": targets({"a": 3})} | kwargs
    with pytest.raises(PlanInvalid) as err:
        make_plan(**args)  # type: ignore[arg-type]
    assert str(err.value) == message


def test_a_target_twice_is_refused() -> None:
    fleet = targets({"a": 2})
    with pytest.raises(PlanInvalid) as err:
        make_plan("f", [*fleet, fleet[1]])
    assert str(err.value) == (
        "Target a:/srv/a/001.db is listed twice: each database runs once per fleet. "
        "Try: pass each target once"
    )


def sample_plan(**overrides: object) -> Plan:
    args: dict[str, object] = {
        "canary": 2,
        "waves": ("10%", "100%"),
        "max_failures": 3,
        "max_failure_rate": 0.2,
        "migrations_dir": "/srv/migrations",
        "manifest": "/srv/fleet.toml",
    } | overrides
    return make_plan("add-index", targets({"a": 30, "b": 20}), **args)  # type: ignore[arg-type]


def test_digest_stable_across_json_and_created_at() -> None:
    plan = sample_plan()
    again = Plan.from_json(plan.to_json())
    assert again == plan
    assert again.digest() == plan.digest()
    assert replace(plan, created_at="2001-01-01T00:00:00+00:00").digest() == plan.digest()
    assert replace(plan, max_failures=4).digest() != plan.digest()
    # The same targets in another order make the same plan: a resume must not look like a change.
    shuffled = make_plan(
        "add-index",
        list(reversed(targets({"a": 30, "b": 20}))),
        canary=2,
        waves=("10%", "100%"),
        max_failures=3,
        max_failure_rate=0.2,
        migrations_dir="/srv/migrations",
        manifest="/srv/fleet.toml",
    )
    assert shuffled.digest() == plan.digest()


# --- the plan file ---------------------------------------------------------------------------------


def test_write_plan_then_resume(tmp_path: Path) -> None:
    plan = sample_plan()
    path = write_plan(plan, tmp_path / "plans")
    assert path == tmp_path / "plans" / "fleet-add-index.json"
    assert os.listdir(tmp_path / "plans") == ["fleet-add-index.json"]  # no temporary file left
    assert read_plan(tmp_path / "plans", "add-index") == plan
    # A resume plans again later: same plan, new created_at. The file keeps the first one.
    later = replace(plan, created_at="2099-01-01T00:00:00+00:00")
    assert write_plan(later, tmp_path / "plans") == path
    assert read_plan(tmp_path / "plans", "add-index") == plan
    assert read_plan(tmp_path / "plans", "other") is None


def test_changed_plan_refused(tmp_path: Path) -> None:
    plan = sample_plan()
    path = write_plan(plan, tmp_path)
    before = path.read_bytes()
    changed = make_plan(
        "add-index",
        targets({"a": 31, "b": 20}),
        canary=2,
        waves=("10%", "50%", "100%"),
        max_failures=3,
        max_failure_rate=0.2,
        migrations_dir="/srv/migrations",
        manifest="/srv/fleet.toml",
    )
    with pytest.raises(ManifestInvalid) as err:
        write_plan(changed, tmp_path)
    assert str(err.value) == (
        f"The plan of fleet add-index changed since it started: {path} has other targets (1 added, "
        f"0 removed), waves. Try: use a new --fleet-id, or delete {path} to plan fleet add-index again"
    )
    assert path.read_bytes() == before


def test_write_plan_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def power_cut(src: str, dst: str) -> None:
        raise OSError("simulated failure before the rename")

    monkeypatch.setattr(os, "link", power_cut)
    with pytest.raises(OSError, match="simulated"):
        write_plan(sample_plan(), tmp_path)
    assert os.listdir(tmp_path) == []  # neither a half plan nor its temporary file


def test_unreadable_plan_file(tmp_path: Path) -> None:
    path = tmp_path / "fleet-f.json"
    path.write_text('{"fleet_id": "f"}', "utf-8")
    with pytest.raises(ManifestInvalid) as err:
        read_plan(tmp_path, "f")
    assert str(err.value) == (
        f"The plan file {path} cannot be read: KeyError: 'targets'. "
        f"Try: delete {path} to plan fleet f again, or use a new --fleet-id"
    )


# --- outcomes ------------------------------------------------------------------------------------


def failed(exc: str) -> str:
    return f"Flow run encountered an exception: {exc}: something happened"


CLASSIFY = [
    ("COMPLETED", "Completed", None, "completed"),
    ("CRASHED", "Crashed", "Execution was interrupted by an unexpected exception", "crashed"),
    ("CANCELLED", "Cancelled", None, "unreached"),
    ("CANCELLING", "Cancelling", None, "unreached"),
    ("SCHEDULED", "Scheduled", None, "pending"),
    ("SCHEDULED", "Late", None, "pending"),
    ("SCHEDULED", "AwaitingRetry", None, "pending"),
    ("SCHEDULED", "AwaitingConcurrencySlot", None, "pending"),
    ("PENDING", "Pending", None, "pending"),
    ("PAUSED", "Paused", None, "pending"),
    ("PAUSED", "Suspended", None, "pending"),
    ("RUNNING", "Running", None, "running"),
    ("StateType.RUNNING", "Retrying", None, "running"),
    *[("FAILED", "Failed", failed(name), "deferred") for name in sorted(DEFERRED_ERRORS)],
    *[("FAILED", "Failed", failed(name), "refused") for name in sorted(REFUSED_ERRORS)],
    *[("FAILED", "Failed", failed(name), "failed") for name in sorted(FAILED_ERRORS)],
    ("FAILED", "Failed", failed("ZeroDivisionError"), "failed"),
    ("FAILED", "Failed", "Flow run encountered an exception: OutsideWindow", "deferred"),
    ("FAILED", "TimedOut", "Flow run exceeded timeout of 60.0 second(s)", "failed"),
    ("FAILED", "Failed", None, "failed"),
    ("failed", "Failed", failed("WrongHost"), "refused"),
]


@pytest.mark.parametrize("state_type,state_name,message,outcome", CLASSIFY)
def test_classify(state_type: str, state_name: str, message: str | None, outcome: Outcome) -> None:
    assert classify(state_type, state_name, message) == outcome


def test_classify_covers_every_prefect_state_type() -> None:
    from prefect.client.schemas.objects import StateType

    seen = {row[0] for row in CLASSIFY}
    assert {t.value for t in StateType} <= seen
    with pytest.raises(ValueError, match="unknown Prefect state type 'ODD'"):
        classify("ODD", "Odd", None)


def test_the_outcomes_are_the_error_classes_own() -> None:
    family = error_family()
    for names, outcome in (
        (DEFERRED_ERRORS, "deferred"),
        (REFUSED_ERRORS, "refused"),
        (FAILED_ERRORS, "failed"),
    ):
        assert {name: family[name].outcome for name in names} == dict.fromkeys(names, outcome)
    assert fleet_flow.classify is classify


def test_the_flow_knows_every_error_class_of_the_package() -> None:
    """classify() reads the family from the classes imported so far: the fleet flow alone must
    import every one the package defines, or a deferred error would count as a failure."""
    import subprocess
    import sys

    script = (
        "import importlib, pkgutil, liteshift\n"
        "from liteshift.flows import fleet\n"
        "from liteshift.fleet.outcomes import error_family\n"
        "before = set(error_family())\n"
        "for m in pkgutil.walk_packages(liteshift.__path__, 'liteshift.'):\n"
        "    if m.name != 'liteshift.cli': importlib.import_module(m.name)\n"
        "print(sorted(set(error_family()) - before), len(before))\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    missing, _, count = run.stdout.strip().rpartition(" ")
    assert missing == "[]", f"not imported by the fleet flow: {missing}"
    assert int(count) >= len(DEFERRED_ERRORS + REFUSED_ERRORS + FAILED_ERRORS)


def test_tally() -> None:
    tally = Tally.of(["completed", "completed", "failed", "crashed", "refused", "deferred", "pending"])
    assert (tally.completed, tally.failed, tally.crashed, tally.refused) == (2, 1, 1, 1)
    assert tally.failures() == 1
    assert tally.finished() == 3
    assert OUTCOMES == (
        "completed",
        "refused",
        "deferred",
        "failed",
        "crashed",
        "unreached",
        "running",
        "pending",
    )


# --- the halt rule -------------------------------------------------------------------------------


def test_canary_halts_on_any_failure_or_crash() -> None:
    plan = sample_plan(canary=2)
    a, b = plan.canary
    assert should_halt(plan, "canary", {a: "completed", b: "running"}) is None
    assert should_halt(plan, "canary", {a: "completed", b: "refused"}) is None
    assert should_halt(plan, "canary", {a: "completed", b: "crashed"}) == (
        f"The canary failed on 1 of 2 databases ({b} crashed)."
    )
    assert should_halt(plan, "canary", {a: "failed", b: "crashed"}) == (
        f"The canary failed on 2 of 2 databases ({a} failed, {b} crashed)."
    )


def test_count_threshold_mid_wave() -> None:
    plan = sample_plan(max_failures=3, max_failure_rate=None)
    wave = plan.waves[1]
    outcomes: dict[str, Outcome] = dict.fromkeys(plan.canary + plan.waves[0], "completed")
    # Two failed, one crashed (the flow retries it), one refused, one deferred, the rest not done.
    outcomes |= {wave[0]: "failed", wave[1]: "failed", wave[2]: "crashed", wave[3]: "refused"}
    outcomes |= {wave[4]: "deferred", wave[5]: "running"}
    assert should_halt(plan, "wave 2", outcomes) is None
    outcomes[wave[2]] = "failed"  # its retry crashed too: the flow records it as failed
    assert (
        should_halt(plan, "wave 2", outcomes)
        == "3 databases failed up to wave 2, which reaches max_failures 3."
    )


def test_rate_threshold_waits_for_enough_finished_runs() -> None:
    plan = sample_plan(max_failures=None, max_failure_rate=0.2)
    assert len(plan.waves[0]) == 4  # 10% of the 48 left after the canary
    outcomes: dict[str, Outcome] = dict.fromkeys(plan.canary, "completed")
    outcomes[plan.waves[0][0]] = "failed"
    # 1 of 3 finished is 33%, but 3 runs are too few to judge a rate.
    assert MIN_FINISHED_FOR_RATE == 5
    assert should_halt(plan, "wave 1", outcomes) is None
    outcomes |= {plan.waves[0][1]: "completed", plan.waves[0][2]: "completed"}
    assert should_halt(plan, "wave 1", outcomes) == (
        "1 of 5 finished migrations failed up to wave 1 (20%), at or above max_failure_rate 0.2."
    )
    # Refused and deferred runs never tried the migration: they do not dilute the rate.
    outcomes |= {k: "refused" for k in plan.waves[1][:10]}
    assert should_halt(plan, "wave 2", outcomes) is not None
    outcomes |= {k: "completed" for k in plan.waves[1][10:11]}
    assert should_halt(plan, "wave 2", outcomes) is None  # 1 of 6 is 17%


def test_a_canary_with_nothing_completed_halts() -> None:
    plan = sample_plan(canary=2)
    a, b = plan.canary
    assert should_halt(plan, "canary", {a: "refused", b: "deferred"}) == (
        f"No canary database completed ({a} refused, {b} deferred): the waves would start without "
        "evidence that the migration works."
    )


def test_a_failing_dry_run_or_down_is_a_failure_not_a_refusal() -> None:
    for name in ("DryRunFailed", "NotReversible"):
        assert classify("FAILED", "Failed", f"Flow run encountered an exception: {name}: x") == "failed"


def test_no_thresholds_never_halt_a_wave() -> None:
    plan = sample_plan(max_failures=None, max_failure_rate=None)
    outcomes: dict[str, Outcome] = dict.fromkeys(plan.waves[0], "failed")
    assert should_halt(plan, "wave 1", outcomes) is None
    with pytest.raises(ValueError, match="'wave 9' is not a stage of fleet add-index"):
        should_halt(plan, "wave 9", outcomes)


def test_resume_hint() -> None:
    assert resume_hint("add-index", "/srv/fleet.toml") == (
        "liteshift fleet run --manifest /srv/fleet.toml --fleet-id add-index"
    )
    assert (
        resume_hint("f", "/srv/my fleet.toml")
        == "liteshift fleet run --manifest '/srv/my fleet.toml' --fleet-id f"
    )


def test_a_fleet_where_every_database_completed_is_finished() -> None:
    assert unfinished("f", "/srv/fleet.toml", {"completed": 9}) is None


def test_a_fleet_that_skipped_databases_ends_with_exit_5_and_says_how_to_finish() -> None:
    left = unfinished("f", "/srv/fleet.toml", {"completed": 7, "unreached": 1, "deferred": 1})
    assert isinstance(left, FleetIncomplete) and left.exit_code == EXIT_INCOMPLETE == 5
    assert str(left) == (
        "Fleet f finished with 2 of 9 databases not migrated: 1 deferred, 1 unreached. Try: see each "
        "one's error with: liteshift fleet status --manifest /srv/fleet.toml --fleet-id f; then resume "
        "with: liteshift fleet run --manifest /srv/fleet.toml --fleet-id f"
    )


def test_a_refused_database_needs_retry_failed_to_run_again() -> None:
    left = unfinished("f", "/srv/my fleet.toml", {"completed": 5, "refused": 1})
    assert isinstance(left, FleetIncomplete)
    assert str(left) == (
        "Fleet f finished with 1 of 6 databases not migrated: 1 refused. Try: see each one's error "
        "with: liteshift fleet status --manifest '/srv/my fleet.toml' --fleet-id f; then resume with: "
        "liteshift fleet run --manifest '/srv/my fleet.toml' --fleet-id f --retry-failed (once the "
        "refused and failed ones are fixed)"
    )


def test_a_failure_below_the_threshold_still_ends_the_fleet_with_exit_1() -> None:
    left = unfinished("f", "/srv/fleet.toml", {"completed": 8, "failed": 1})
    assert left is not None and not isinstance(left, FleetIncomplete)
    assert left.exit_code == EXIT_FAILED
    assert str(left) == (
        "Fleet f finished with 1 of 9 databases not migrated: 1 failed. Try: see each one's error with: "
        "liteshift fleet status --manifest /srv/fleet.toml --fleet-id f; then resume with: liteshift "
        "fleet run --manifest /srv/fleet.toml --fleet-id f --retry-failed (once the refused and failed "
        "ones are fixed)"
    )
