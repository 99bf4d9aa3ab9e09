"""What the migrate steps (liteshift.tasks) stand on: the rehearsal on a schema copy, the write
ledger, the derived inverse of each step, the restore under proof, and the status of a database
(docs/UNDO.md)."""
