"""Names derived from a database: its key (file name and path hash) and artifact slugs."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path


def slug(text: str) -> str:
    """An artifact key from a name: lowercase letters, digits and dashes only."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]+", "-", text.lower())).strip("-") or "db"


def db_key(database: Path | str) -> str:
    """A readable, unique name for a database: its file name and a short hash of its resolved path.

    tenants/a/app.db and tenants/b/app.db get different keys, so their reports, artifacts, tags and
    concurrency limits never overwrite each other.
    """
    resolved = str(Path(database).expanduser().resolve())
    digest = hashlib.sha256(resolved.encode()).hexdigest()[:8]
    return f"{slug(Path(resolved).name)[:40]}-{digest}"
