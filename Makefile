# serviceloop: `make run` and `make test` set everything up from nothing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SL := $(VENV)/bin/serviceloop
STAMP := $(VENV)/.installed-stamp
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: install services migrate run demo test test-faults bench lint k8s-validate image seed clean openapi

install: $(STAMP)

# uv resolves and installs the dependencies in seconds where pip takes minutes; pip alone
# is the fallback when uv cannot be had
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q uv && $(VENV)/bin/uv pip install -q --python $(PY) -e '.[dev]' \
	  || $(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

services:
	@scripts/ensure-services

migrate: install services
	$(SL) migrate

run: migrate
	$(SL) up

# against `make run` in another terminal: seeds, drives orders round the loop, prints the audit
demo: install
	$(SL) demo

test: install
	@scripts/ensure-services --postgres
	@PY=$(PY) scripts/run-tests $(PYTEST_ARGS)

bench: install
	@scripts/ensure-services --postgres
	$(PY) -m bench.run

lint: install
	$(VENV)/bin/ruff check .

openapi: install
	$(PY) -m contracts.openapi contracts/openapi.json

# the fault-injection suite alone (it also runs in `make test`)
test-faults: install
	@scripts/ensure-services --postgres
	$(PY) -m pytest -q -p no:cacheprovider tests/faults $(PYTEST_ARGS)

k8s-validate: install
	$(PY) scripts/k8s_validate.py

image:
	docker build -t serviceloop:latest .

clean:
	rm -rf var .pytest_cache
