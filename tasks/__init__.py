"""The steps of the migrate pipeline (and the rollback): plain logic over a database path, no Prefect.

One import name only: liteshift.tasks (this folder is liteshift/tasks through a symlink). Imported
as top-level `tasks` it would load every step a second time, with globals of its own.
"""

if __name__ != "liteshift.tasks":
    raise ImportError(f"import liteshift.tasks, not {__name__}: one module, one name (docs/ARCHITECTURE.md)")
