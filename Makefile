# Two commands set everything up on a fresh machine (see README.md):
#   make serve   bootstrap, make sure the default served set (models/default.py) is exported and registered, serve it
#   make test    bootstrap, then pytest
# Each step reuses what exists, so a second run starts in seconds.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# The Debian package `dataset-fashion-mnist` installs the IDX files here.
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
FMNIST_STAMP := $(FMNIST_DIR)/t10k-labels-idx1-ubyte.gz

PYTEST_ARGS ?=
HOST ?= 127.0.0.1
PORT ?= 3000

.PHONY: bootstrap venv dataset browser default-model serve test sweep sweep-fmnist reliability faults overload soak fuzz-long clean

bootstrap: venv dataset browser

venv: $(VENV)/.installed

# Re-installs only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>&1 | { grep -v 'is ignored: it is neither' || true; }
	$(PY) -m pip install -q -e '.[dev]' 2>&1 | { grep -v 'is ignored: it is neither' || true; }
	$(PY) -c 'import torch, onnxruntime, bentoml'
	@touch $@

dataset: $(FMNIST_STAMP)

$(FMNIST_STAMP):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq dataset-fashion-mnist

# Debian's Chromium, for the page's browser test (Playwright drives it; it downloads no browser).
CHROMIUM ?= /usr/bin/chromium
browser: $(CHROMIUM)

$(CHROMIUM):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium

default-model: bootstrap
	$(PY) -m export.default_model

# bentoml serve reads bentofile.yaml (service.service:Classifier); RESNET_* settings: service/config.py
serve: default-model
	$(VENV)/bin/bentoml serve . --host $(HOST) --port $(PORT)

test: bootstrap
	$(PY) -m pytest $(PYTEST_ARGS)

# Latency and throughput by depth (README, "Load tests"); each writes reports/latency-by-depth/<timestamp>/.
SWEEP_ARGS ?=
sweep: bootstrap
	$(PY) -m loadtests.sweep --models resnet18,resnet34,resnet50,resnet101,resnet152 --users 1,8,32 --duration 30s $(SWEEP_ARGS)

sweep-fmnist: bootstrap
	$(PY) -m loadtests.sweep --models fmnist --users 1,8,32 --duration 30s $(SWEEP_ARGS)

# The reliability benchmarks (bench/reliability/): not part of `make test`; each writes
# reports/reliability/<name>.json and regenerates reports/reliability/report.md. One at a time, on a quiet machine.

faults: default-model
	$(PY) -m bench.reliability.faults

overload: default-model
	$(PY) -m bench.reliability.overload

soak: default-model
	$(PY) -m bench.reliability.soak --minutes 30

fuzz-long: default-model
	$(PY) -m bench.reliability.fuzz --examples 1000

# All four, ~40 min.
reliability: faults overload soak fuzz-long

clean:
	rm -rf $(VENV) artifacts .pytest_cache
