"""Database health: thresholds, measuring, judging, rendering, the history of measurements and
its chart, the alerting automations' settings, and the repairs (docs/health.md)."""
