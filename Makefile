# The two commands a new user needs: `make run` (main job on the embedded SQLite database) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export DATA_DIR ?= $(CURDIR)/data

.PHONY: run worker test install browser lint migrate machine admin bench dist clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

migrate: install
	$(PY) manage.py migrate --no-input -v 0

## Main job: set up, migrate the embedded SQLite DB, register this machine and interface, install the
## binaries of machine/demo/manifest.json, run demo processes with the workers until idle, print a summary.
run: migrate
	$(PY) manage.py quickstart

## The runner on its own: drive every queue until stopped (Ctrl-C stops it cleanly).
worker: migrate
	$(PY) manage.py runworker --progress

machine: migrate
	$(PY) manage.py machine

ADMIN_USER ?= admin
ADMIN_PASSWORD ?= admin
ADMIN_ADDR ?= 127.0.0.1:8000

## Local admin: migrate, create superuser $(ADMIN_USER) if missing, register this host, serve the admin.
admin: migrate
	DJANGO_SUPERUSER_USERNAME='$(ADMIN_USER)' DJANGO_SUPERUSER_PASSWORD='$(ADMIN_PASSWORD)' \
	DJANGO_SUPERUSER_EMAIL='$(ADMIN_USER)@localhost' $(PY) manage.py createsuperuser --no-input 2>/dev/null \
	  || echo "admin user '$(ADMIN_USER)' already exists; password unchanged"
	$(PY) manage.py machine -v 0
	@echo "Admin: http://$(ADMIN_ADDR)/admin/  (user $(ADMIN_USER))"
	DJANGO_DEBUG=1 $(PY) manage.py runserver $(ADMIN_ADDR)

## The admin browser tests drive Debian's Chromium. A fresh machine gets it here when we are root
## with apt-get; otherwise this stops at once and says the one command to run.
CHROMIUM ?= /usr/bin/chromium
APT_GET ?= apt-get
AS_ROOT ?= $(shell [ "$$(id -u)" = 0 ] && echo yes)
browser:
	@if [ ! -x "$(CHROMIUM)" ]; then \
	  if [ "$(AS_ROOT)" = yes ] && command -v $(APT_GET) >/dev/null; then \
	    echo "Installing Debian's chromium for the admin browser tests ($(APT_GET) install -y chromium)"; \
	    $(APT_GET) update -qq && DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y -qq chromium >/dev/null \
	      && test -x "$(CHROMIUM)" \
	      || { echo "Could not install chromium. Run: sudo apt-get install -y chromium" >&2; exit 1; }; \
	  else \
	    echo "The admin browser tests need Debian's Chromium at $(CHROMIUM). Run: sudo apt-get install -y chromium" >&2; \
	    exit 1; \
	  fi; \
	fi

## Test suite (SQLite by default; set DATABASE_URL=postgres://... for PostgreSQL).
test: install browser
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: migrate
	$(PY) bench/bench_machine.py
	$(PY) bench/bench_process.py
	$(PY) bench/bench_claims.py
	$(PY) bench/bench_drain.py
	$(PY) bench/bench_ticks.py
	$(PY) bench/bench_idle.py

## Build the sdist and wheel into dist/ (what .ci/wheel-smoke installs into a fresh virtualenv).
dist: install
	rm -rf dist
	$(PY) -m build --outdir dist .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
