# The two commands of presence-ha (README): `make run` and `make test`.
# Both create .venv with python3 -m venv and install the project into it when needed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA_DIR ?= data
BASE_PORT ?= 15222
SERVICE_PORT ?= 5222
USERS ?= 10
NODES ?= 2
DOMAIN ?= localhost

.PHONY: run test test-extended lint install unit integration bench clean

# pip shows what it collects and installs (a first run takes a minute or so: not silence).
$(STAMP): pyproject.toml
	@echo "== installing presence-ha and its dependencies into $(VENV) (first run, or pyproject.toml changed)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --progress-bar on -e ".[test,loadtest]"
	touch $(STAMP)
	@echo "== $(VENV) is ready"

install: $(STAMP)

## run: a local pair of nodes on the embedded SQLite default, ready for clients
run: $(STAMP)
	@echo "== checking for HAProxy (the service address; Debian's package is installed when missing)"
	@./scripts/ensure-debian.sh haproxy=haproxy
	@echo "== starting the cluster in $(DATA_DIR)/ (Ctrl-C stops it)"
	$(BIN)/presence-ha up --data-dir $(DATA_DIR) --service-port $(SERVICE_PORT) --base-port $(BASE_PORT) --users $(USERS) --nodes $(NODES) --domain $(DOMAIN)

## lint: ruff, then mypy; the settings are in pyproject.toml
# mypy checks the installed names (presence_ha.server, ...), but the editable install maps
# them with an import hook that mypy cannot follow. A link named presence_ha to the
# repository root, in a folder given to mypy as mypy_path, gives mypy the same names
# (its error paths start with .venv/mypy_path/presence_ha/). ruff takes ~1 s, mypy
# ~15 s of CPU from a cold cache and ~1 s warm.
lint: $(STAMP)
	$(BIN)/ruff check .
	mkdir -p $(VENV)/mypy_path
	ln -sfn ../.. $(VENV)/mypy_path/presence_ha
	MYPYPATH=$(VENV)/mypy_path $(BIN)/mypy

## test: lint, then every test, on SQLite and on the real PostgreSQL
test: lint
	./scripts/test-services.sh
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile -m 'not serial and not extended' --durations=25 tests
	$(BIN)/python -m pytest -q -p no:cacheprovider -m 'serial and not extended' --durations=25 tests

## test-extended: the longer variants `make test` leaves out (see the `extended` marker)
test-extended: $(STAMP)
	./scripts/test-services.sh
	$(BIN)/python -m pytest -q -p no:cacheprovider -m extended tests

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

integration: $(STAMP)
	./scripts/test-services.sh
	$(BIN)/python -m pytest -q tests/integration

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .ruff_cache .mypy_cache
