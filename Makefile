# `make run` and `make test` do all set-up on a fresh machine (Debian 12, CPython 3.11).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MODELS := models/artifacts/small/model.safetensors models/artifacts/large/model.safetensors
# apt-get needs root; use sudo when we are not.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help run test test-unit test-integration test-e2e venv redis protos models certs k8s-generate clean

help:
	@echo "make run    start the whole stack (Triton, Redis, services, gateway) on the documented ports"
	@echo "make test   install what is needed and run unit, integration and e2e tests"
	@echo "make protos regenerate gen/ from protos/;  make models  retrain the models"
	@echo "make certs  a local CA and per-service certificates (certs/) for mTLS"

run: venv redis $(MODELS)
	$(VENV)/bin/llmesh up

test: venv redis $(MODELS)
	$(PY) -m pytest -ra

test-unit: venv
	$(PY) -m pytest tests/unit

test-integration: venv
	$(PY) -m pytest tests/integration

test-e2e: venv redis $(MODELS)
	$(PY) -m pytest tests/e2e

venv: $(STAMP)

# Exact versions come from requirements.lock; torch==2.13.0 is the local CPU build.
$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $@

redis:
	@command -v redis-server >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq redis-server; }

protos: venv
	$(PY) protos/generate.py

# Trained once (about 8 minutes on 2 cores) when the committed artifacts are missing.
$(MODELS):
	$(MAKE) venv
	$(PY) -m models.train

models: venv
	$(PY) -m models.train

# A local CA and a certificate per service in certs/ (gitignored), for mutual TLS in the mesh.
certs: venv
	$(VENV)/bin/llmesh certs --out certs

# The Istio routes of k8s/components/istio from its experiments.yaml (a test checks they match).
k8s-generate: venv
	$(VENV)/bin/llmesh experiments export-istio k8s/components/istio/experiments.yaml --out k8s/components/istio/generated.yaml

clean:
	rm -rf .run .cache .pytest_cache
