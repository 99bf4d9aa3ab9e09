"""The core every capability stands on: connections, SQL text, errors, configuration, the lock,
the maintenance window, the tracking table, migration files, table introspection and the throttle.

Nothing here imports a capability package, the steps (liteshift.tasks), the flows or Prefect
(tests/test_layers.py)."""
