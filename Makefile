# The two commands a new user needs: `make run` (main job on the embedded SQLite database) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export DATA_DIR ?= $(CURDIR)/data

.PHONY: run test install lint migrate machine admin bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

migrate: install
	$(PY) manage.py migrate --no-input -v 0

## Main job: set up, migrate the embedded SQLite DB, register this machine, show it.
run: migrate
	$(PY) manage.py machine

machine: migrate
	$(PY) manage.py machine

## Test suite (SQLite by default; set DATABASE_URL=postgres://... for PostgreSQL).
test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: migrate
	$(PY) bench/bench_machine.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
