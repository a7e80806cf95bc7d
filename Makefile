# plantwatch — every target installs what it needs into .venv first.
SHELL := /bin/bash
PY_BOOT ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export BENTOML_DO_NOT_TRACK := true
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_HOME := $(CURDIR)/.prefect
export BENTOML_HOME := $(CURDIR)/.bentoml
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: install demo test lint bench serve dashboards deploy clean

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PY_BOOT) >/dev/null || { echo "error: $(PY_BOOT) not found (plantwatch needs Python 3.11)"; exit 2; }
	test -d $(VENV) || $(PY_BOOT) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	bash scripts/demo.sh

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src flows services tests bench
	$(BIN)/mypy src

bench: install
	$(BIN)/python bench/run_all.py

serve: install
	$(BIN)/bentoml serve services.service:Detector --host 127.0.0.1 --port $${PORT:-3000}

dashboards: install
	$(BIN)/evidently ui --workspace monitoring/workspace --host 127.0.0.1 --port $${PORT:-8000}

# Prefect server (background, host/port from params orchestrate:, stop: kill -TERM $$(cat .prefect/server.pid))
# + the train / monitor / retrain-on-drift deployments served in the foreground (Ctrl-C or SIGTERM).
deploy: install
	@url=$$($(BIN)/python -m flows.deploy ensure-server) && echo "Prefect UI: $${url%/api}" && \
	  PREFECT_API_URL=$$url PREFECT_LOGGING_EXTRA_LOGGERS=plantwatch exec $(BIN)/python -m flows.deploy serve

clean:
	rm -rf data/interim data/processed data/quarantine models metrics plots reports registry monitoring .bentoml gx
