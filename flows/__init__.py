"""Prefect flows: they compose the steps in tasks/ and decide what happens on failure."""
