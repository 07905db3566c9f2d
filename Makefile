# talkinghead: `make demo` and `make test` are the two set-up commands; each installs what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: setup demo test test-system lint format bench images up down embedded clean

$(STAMP): pyproject.toml
	@bash scripts/system-deps.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/python -m services.demo

test: setup
	$(BIN)/python -m pytest -q -m "not system" $(PYTEST_ARGS)

# Outages (servers stopped and started under running jobs): tests/chaos. The images built
# from deploy/docker/ and run as a stack by a dockerd of the tests' own: tests/images.
test-system: setup
	$(BIN)/python -m pytest -q -m system tests/chaos tests/images $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: setup
	$(BIN)/python bench/api_load.py

# The CPU images (base, api, ingest, preprocess, trainer, renderer) from deploy/docker/;
# PYTHON_IMAGE, TORCH_VERSION, WHEELHOUSE_URL... pass through (docs/deploy.md).
images:
	bash scripts/build-images.sh $(VERSION)

# The distributed stack on this host with Docker Compose (docs/deploy.md; needs a .env, see
# .env.example). `migrate` builds the shared base image every service image starts FROM.
up:
	docker compose build migrate
	docker compose up -d --build

down:
	docker compose down

# The embedded stack in the foreground; `.venv/bin/talkinghead down` stops it from another shell.
embedded: setup
	$(BIN)/talkinghead up

clean:
	rm -rf .talkinghead demo-output .pytest_cache .mypy_cache .ruff_cache
