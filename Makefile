# serviceloop: `make run` and `make test` set everything up from nothing.
# The virtualenv's interpreter: the distribution's own Python 3.11+ where it can make one
# (Debian's is built with profile-guided and link-time optimisation into one static binary,
# as the official python:3.11 images behind the Dockerfile are; a default pyenv or source
# build is not, and cost the whole loop's Python processes about 12 % more CPU: see
# bench/HISTORY.md, fifteenth session), else the python3 on PATH. `make PYTHON=...` chooses.
PYTHON ?= $(shell /usr/bin/python3 -c 'import ensurepip, sys, venv; \
  sys.exit(sys.version_info < (3, 11))' 2>/dev/null && echo /usr/bin/python3 || echo python3)
VENV ?= .venv
PY := $(VENV)/bin/python
SL := $(VENV)/bin/serviceloop
STAMP := $(VENV)/.installed-stamp
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: install compiled services migrate run demo test test-faults bench lint k8s-validate image seed clean openapi

install: $(STAMP)

# uv resolves and installs the dependencies in seconds where pip takes minutes; pip alone
# is the fallback when uv cannot be had. Bytecode is compiled once here (uv does not by
# default, and nothing here writes it at run time): every process the system and its tests
# start would otherwise compile nameko, SQLAlchemy and eventlet from source again, about a
# second of CPU each.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q uv && $(VENV)/bin/uv pip install -q --compile-bytecode \
	  --python $(PY) -e '.[dev]' || $(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# the project's own modules, compiled where they changed (into the __pycache__ git ignores)
compiled: install
	@$(PY) -m compileall -q -j 0 contracts serviceloop services bench tests >/dev/null

services:
	@scripts/ensure-services

migrate: compiled services
	$(SL) migrate

run: migrate
	$(SL) up

# against `make run` in another terminal: seeds, drives orders round the loop, prints the audit
demo: compiled
	$(SL) demo

test: compiled
	@scripts/ensure-services --postgres
	@PY=$(PY) scripts/run-tests $(PYTEST_ARGS)

bench: compiled
	@scripts/ensure-services --postgres
	$(PY) -m bench.run

lint: install
	$(VENV)/bin/ruff check .

openapi: install
	$(PY) -m contracts.openapi contracts/openapi.json

# the fault-injection suite alone (it also runs in `make test`)
test-faults: compiled
	@scripts/ensure-services --postgres
	$(PY) -m pytest -q -p no:cacheprovider tests/faults $(PYTEST_ARGS)

k8s-validate: install
	$(PY) scripts/k8s_validate.py

image:
	docker build -t serviceloop:latest .

clean:
	rm -rf var .pytest_cache
