"""The six steps of the pipeline (and the rollback): plain logic plus thin Prefect tasks."""
