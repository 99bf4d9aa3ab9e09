"""Archiving old rows to a second SQLite file in batches, never losing or duplicating one
(docs/archive.md)."""
