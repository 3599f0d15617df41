# The two commands of the README:
#   make run    set up, generate a sample log, run the whole pipeline locally, push, report
#   make test   set up and run the test suite
PYTHON_VERSION := $(shell cat .python-version)
# The interpreter .python-version names (pyenv layout), else any python3.10 on the PATH.
PYTHON ?= $(shell ls $(HOME)/.pyenv/versions/$(PYTHON_VERSION)/bin/python 2>/dev/null || \
            command -v python3.10 2>/dev/null || echo python3.10)
VENV := .venv
BIN := $(VENV)/bin
export TF_USE_LEGACY_KERAS := 1
export PYTHONHASHSEED := 0

ROWS ?= 20000
DAYS ?= 3
CONFIG ?= schemas/impressions.yaml
OUTPUT ?= runs/local

.PHONY: setup browser iproute2 run test lock clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements/lock.txt setup.py
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 10), "Python 3.10 is required (see .python-version), got " + sys.version'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==24.2 uv==0.13.8
	$(BIN)/uv pip install --python $(BIN)/python -r requirements/lock.txt
	$(BIN)/uv pip install --python $(BIN)/python --no-deps -e .
	touch $@

# Headless Chromium renders the run report in the tests (Debian's package).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

run: setup
	$(BIN)/mtlp generate-logs --rows $(ROWS) --days $(DAYS) --out data/logs
	$(BIN)/mtlp run --config $(CONFIG) --output $(OUTPUT)
	$(BIN)/mtlp report $(OUTPUT)

# The Kubeflow Trainer executing test runs each node in a network namespace (Debian's iproute2).
iproute2:
	@command -v ip >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq iproute2 >/dev/null; }

test: setup browser iproute2
	$(BIN)/python -m pytest tests -v --durations=15

# Re-resolve the pinned set from requirements/requirements.in.
lock: setup
	$(BIN)/uv pip compile --python-version 3.10 --no-header requirements/requirements.in -o requirements/lock.txt

clean:
	rm -rf data runs serving
