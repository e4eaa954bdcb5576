# BDI Edge — developer entry points. `make run` and `make test` are the two commands.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# the local settings file every `bdi` command reads (bdi reads the same BDI_ENV_FILE)
BDI_ENV_FILE ?= bdi.env

.PHONY: install kafka-jars debian-packages dev run demo test test-fast screenshots lint bench clean

install: $(STAMP) $(BDI_ENV_FILE) kafka-jars debian-packages

# Reinstall only when the dependency list changes; otherwise `make install` is a no-op.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Written once, never overwritten: on a machine without CUDA it chooses the dev profile (the
# CPU allowed, packaged EfficientNet-Lite0) for every `bdi` command run from here.
$(BDI_ENV_FILE): | $(STAMP)
	$(PY) -m configs auto

# Apache Kafka's jars from Maven Central, once (.kafka/, git-ignored): the Kafka tests and
# `bdi up --broker kafka` run them. Where Java 17 or Maven is missing it says so and goes on.
kafka-jars: | $(STAMP)
	$(PY) -m consumers.apache_kafka

# Debian's kcat (librdkafka's command-line client), which the Kafka client tests run as a
# camera and an MES would, and PostgreSQL (initdb, pg_ctl under /usr/lib/postgresql/*/bin),
# which the trace store's tests start on a free port, and Chromium, which the operator
# screen's browser tests drive through Playwright. Installed where apt-get can (root or
# sudo); otherwise it says so and those tests skip, naming it.
DEBIAN_PACKAGES := kcat postgresql chromium
debian-packages:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
	  case $$p in \
	    postgresql) ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
	      || command -v initdb >/dev/null ;; \
	    *) command -v $$p >/dev/null ;; \
	  esac || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null; then echo "debian-packages: no apt-get; not installed:$$missing"; exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; \
	else echo "debian-packages: needs root or sudo; not installed:$$missing"; exit 0; fi; \
	echo "debian-packages: installing$$missing"; \
	$$sudo apt-get update -qq >/dev/null && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null \
	  || echo "debian-packages: apt-get failed; not installed:$$missing"

# the dev profile for this checkout, whatever the machine (edit bdi.env to change it back)
dev: install
	$(PY) -m configs dev

# the whole service on embedded defaults: local broker, REST API, consumers; Ctrl-C stops
# it. `bdi up` takes the dev profile unless bdi.env or BDI_PROFILE chose one.
run: install
	$(VENV)/bin/bdi up

# a trained demo recipe and a synthetic camera streaming through the running line (or one it
# starts), until Ctrl-C
demo: install
	$(VENV)/bin/bdi demo

test: install
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow and not kafka"

# the operator screen's screenshots in docs/ui/ (the README shows them), from the browser tests
screenshots: install
	BDI_UI_SCREENSHOTS=$(CURDIR)/docs/ui $(PY) -m pytest -m browser tests/edge/ui

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: install
	BDI_REQUIRE_CUDA=0 $(VENV)/bin/bdi bench engine --data $${BDI_TEST_DATA:-../shared/data}/mpdd_metal_plate/metal_plate --json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
