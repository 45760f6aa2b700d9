# `make run` and `make test` do all set-up on a fresh machine (Debian 12, CPython 3.11).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The engine's own environment: vLLM's CPU build wants numpy 2, the Triton stub and the
# project numpy<2 (docs/ARCHITECTURE.md, "Two Python environments").
ENGINE_VENV := .venv-engine
ENGINE_STAMP := $(ENGINE_VENV)/.installed
SMALL_MODEL := models/artifacts/small/model.safetensors
SMOLLM2_DIR := .cache/models/smollm2-135m-instruct
SMOLLM2 := $(SMOLLM2_DIR)/config.json
STUDENT_DIR := .cache/models/smollm2-student
STUDENT := $(STUDENT_DIR)/config.json
# apt-get needs root; use sudo when we are not.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

BUF_DIR := .cache/buf
BUF := $(BUF_DIR)/node_modules/.bin/buf

.PHONY: help run test lint chaos test-unit test-integration test-e2e venv engine redis protos models retrain distill certs k8s-generate clean

help:
	@echo "make run      start the whole stack (Triton with vLLM, Redis, services, gateway) on the documented ports"
	@echo "make test     install what is needed, check the house rules (make lint), run unit, integration and e2e tests"
	@echo "make lint     import contracts, ruff (lint + format), mypy, buf lint on protos/"
	@echo "make chaos    the chaos suite: faults and overload against a stack of its own, a table of figures"
	@echo "make models   build what is missing: SmolLM2 from its wheel, its distilled student, the small model"
	@echo "make retrain  retrain llmesh's own small model;  make distill  distil the student again"
	@echo "make protos   regenerate gen/ from protos/"
	@echo "make certs    a local CA and per-service certificates (certs/) for mTLS"

run: venv engine redis models
	$(VENV)/bin/llmesh up

test: lint engine redis models
	$(PY) -m pytest -ra

# The house rules (docs/ARCHITECTURE.md, "Rules"): cheap, so first.
lint: venv $(BUF)
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	cd protos && ../$(BUF) lint

# buf from the npm registry (its official package), pinned.
$(BUF):
	npm install --silent --no-audit --no-fund --prefix $(BUF_DIR) @bufbuild/buf@1.75.0

# Faults and overload against a stack of its own (free loopback ports, bounded in time); prints
# the measured figures against their pass criteria (docs/RESILIENCE.md).
chaos: venv engine redis models
	$(PY) -m tools.chaos

test-unit: venv
	$(PY) -m pytest tests/unit

test-integration: venv engine models
	$(PY) -m pytest tests/integration

test-e2e: venv engine redis models
	$(PY) -m pytest tests/e2e

venv: $(STAMP)

# Exact versions come from requirements.lock; torch==2.13.0 is the local CPU build.
$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $@

engine: $(ENGINE_STAMP)

# Every package is pinned in the lock file, so no resolver runs (--no-deps); see its header.
$(ENGINE_STAMP): requirements-engine.lock
	test -x $(ENGINE_VENV)/bin/python || $(PYTHON) -m venv $(ENGINE_VENV)
	$(ENGINE_VENV)/bin/python -m pip install --quiet --no-deps -r requirements-engine.lock
	touch $@

redis:
	@command -v redis-server >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq redis-server; }

protos: venv
	$(PY) protos/generate.py

models: $(SMALL_MODEL) $(SMOLLM2) $(STUDENT)

# SmolLM2-135M-Instruct as a Hugging Face directory, converted once from the wheel's GGUF file
# (never committed: 273 MB).
$(SMOLLM2): | $(ENGINE_STAMP)
	$(ENGINE_VENV)/bin/python -m models.smollm2 --out $(SMOLLM2_DIR)

# The cheap tier, distilled from SmolLM2 once when missing (tools/distill: teacher answers from
# vLLM, then training; under 20 minutes on 2 cores); never committed (85 MB).
$(STUDENT): | $(SMOLLM2) $(ENGINE_STAMP)
	$(ENGINE_VENV)/bin/python -m tools.distill --out $(STUDENT_DIR)

distill: engine $(SMOLLM2)
	$(ENGINE_VENV)/bin/python -m tools.distill --out $(STUDENT_DIR)

# Trained once (about 2 minutes on 2 cores) when the committed artifact is missing.
$(SMALL_MODEL):
	$(MAKE) venv
	$(PY) -m models.train

retrain: venv
	$(PY) -m models.train

# A local CA and a certificate per service in certs/ (gitignored), for mutual TLS in the mesh.
certs: venv
	$(VENV)/bin/llmesh certs --out certs

# The Istio routes of k8s/components/istio from its experiments.yaml (a test checks they match).
k8s-generate: venv
	$(VENV)/bin/llmesh experiments export-istio k8s/components/istio/experiments.yaml --out k8s/components/istio/generated.yaml

clean:
	rm -rf .run .cache .pytest_cache
