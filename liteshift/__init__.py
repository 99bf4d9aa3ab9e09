"""liteshift: schema migrations for live SQLite databases, as a Prefect 3 pipeline."""

__version__ = "0.1.0"
