# BDI Edge — developer entry points. `make run` and `make test` are the two commands.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install run demo test test-fast lint bench clean

install: $(STAMP)

# Reinstall only when the dependency list changes; otherwise `make install` is a no-op.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# the whole service on embedded defaults: local broker, REST API, consumers. `bdi up` fills
# in the dev defaults (BDI_REQUIRE_CUDA=0, packaged EfficientNet-Lite0) where unset.
run: install
	$(VENV)/bin/bdi up

# a trained demo recipe and a synthetic camera streaming through the running line
demo: install
	$(VENV)/bin/bdi demo

test: install
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow and not kafka"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: install
	BDI_REQUIRE_CUDA=0 $(VENV)/bin/bdi bench engine --data $${BDI_TEST_DATA:-../shared/data}/mpdd_metal_plate/metal_plate --json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
