"""Prefect flows: they compose the steps and the capabilities, and decide what happens on failure.

One import name only: liteshift.flows (this folder is liteshift/flows through a symlink).
"""

if __name__ != "liteshift.flows":
    raise ImportError(f"import liteshift.flows, not {__name__}: one module, one name (docs/ARCHITECTURE.md)")
