# Two commands set everything up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# Prefect's home for the embedded API stays inside the project unless you set your own.
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 90

.PHONY: install demo test lint typecheck clean up down automations

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/liteshift demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest

# A local Prefect server (127.0.0.1:$PREFECT_PORT, default 4200), the process pool "liteshift",
# its worker and the deployments; PIDs and logs in .run/. `make down` stops exactly those PIDs.
# LITESHIFT_SERVER_DB=postgres: the server on a PostgreSQL cluster of its own (loopback, free port).
# FLEET_MANIFEST=FILE: one worker per [hosts.NAME] table, on its queue (default liteshift-NAME).
# LITESHIFT_WORKER_LIMIT=N: flow runs each worker runs at once (default 4).
up: install
	$(BIN)/python deployments/stack.py up

# Stops every worker*.pid in .run/, then the server, then PostgreSQL when one was started.
down:
	$(BIN)/python deployments/stack.py down

# (Re)install the zombie-run automation on the server `make up` started.
automations: install
	$(BIN)/python deployments/stack.py automations

clean:
	rm -rf $(VENV) .prefect data reports build dist .mypy_cache .ruff_cache .pytest_cache

# Fleet rollouts over three worker "hosts" on a real server: see docs/DEPLOYING.md, "Fleets".
.PHONY: fleet
fleet: install
	$(BIN)/pytest -m fleet tests/e2e/test_fleet_rollout.py

# The long reliability matrix (every kill point, concurrent writers): see docs/RELIABILITY.md.
.PHONY: reliability
reliability: install
	$(BIN)/pytest -m "slow or not slow" tests/reliability
