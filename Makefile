# serviceloop: `make run` and `make test` set everything up from nothing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SL := $(VENV)/bin/serviceloop
STAMP := $(VENV)/.installed-stamp
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: install services migrate run demo test bench lint k8s-validate seed clean openapi

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

services:
	@scripts/ensure-services

migrate: install services
	$(SL) migrate

run: migrate
	$(SL) up

demo: migrate
	$(SL) seed --customers 200

test: install
	@scripts/ensure-services --postgres
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

bench: install
	@scripts/ensure-services --postgres
	$(PY) -m bench.run

lint: install
	$(VENV)/bin/ruff check .

openapi: install
	$(PY) -m contracts.openapi contracts/openapi.json

k8s-validate:
	@echo "k8s-validate: deploy/k8s manifests arrive with issue 8; nothing to validate yet"

clean:
	rm -rf var .pytest_cache
