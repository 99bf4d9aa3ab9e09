"""Fleets of databases: the manifest and its inventory, the rollout plan, and the outcomes and
halt rule (docs/fleet.md)."""
