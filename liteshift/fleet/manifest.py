"""A fleet manifest: hosts, the globs of their databases, and the inventory it yields.

Plain Python, no Prefect: the migrate-fleet flow reads a manifest, finds each host's databases,
writes one plan per fleet id (so a resumed run keeps its waves), and migrates them on each host's
queue (docs/fleet.md).

    migrations = "migrations"          # optional, relative to this file

    [hosts.db-1]
    paths = ["/srv/app/*.db", "tenants/**/*.db"]
    queue = "liteshift-db-1"           # optional: the default
    inventory = false                  # optional: true globs on the host itself
"""

from __future__ import annotations

import difflib
import glob
import os
import re
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from liteshift.core.errors import BadInput

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")


TOP_KEYS = ("hosts", "migrations")


HOST_KEYS = ("inventory", "paths", "queue")


EXAMPLE_HOST = '[hosts.db-1] with paths = ["/srv/app/*.db"]'


# SQLite's companions and liteshift's own files beside a database: never a target of their own.
SKIP_SUFFIXES = ("-wal", "-shm", "-journal", ".partial")


BACKUP_MARK = ".backup-"


class ManifestInvalid(BadInput):
    """The fleet manifest, or what it finds on disk, cannot make a fleet; nothing was started."""


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
