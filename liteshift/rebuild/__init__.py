"""Table rebuilds, the changes ALTER TABLE cannot make: the copy plan, the blocking and online
engines, foreign keys around them, and constraints added to existing rows (docs/rebuild.md)."""
