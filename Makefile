# One place for the commands the README promises. Everything runs from a local virtualenv (.venv).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: install run sandbox-stop test test-fast lint sandbox benchmarks clean env

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

install: $(VENV)/.installed

## The main job: the sync end to end against the local sandbox (started in the background if needed).
run: install
	$(PY) scripts/run_local.py

sandbox-stop:
	$(PY) scripts/run_local.py --stop-sandbox

## The test command (also what CI runs): lint, the layer contracts (import-linter), then every test.
test: install
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest

## The inner loop: the same checks, then every test not marked slow (the whole-DAG e2e tests and a few long ones).
test-fast: install
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -m "not slow" -n 2

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

## Start the local DreamApply / Dynamics 365 / Entra ID sandbox in the foreground.
sandbox: install
	$(PY) -m sandbox serve

## docker-compose.yaml's .env: Fernet key, api secrets and passwords generated; never overwrites an existing .env.
## BASE_DIGEST=sha256:... pins the base image when Docker cannot look it up (README "Deploy").
env:
	$(if $(wildcard $(PY)),$(PY),$(PYTHON)) scripts/make_env.py $(if $(BASE_DIGEST),--base-digest $(BASE_DIGEST))

benchmarks: install
	$(PY) benchmarks/sandbox_startup.py

clean:
	rm -rf $(VENV) .sandbox .airflow .pytest_cache .ruff_cache
