# The two commands: `make run` (set up and run everything) and `make test` (set up and pass the tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install run test lint check clean docs docs-build

$(BIN)/.installed: pyproject.toml clients/python/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]" -e clients/python
	touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/conveyor up $(ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy domains app api tasks
	$(BIN)/mypy --strict clients/python/conveyor_client
	$(BIN)/lint-imports

test: lint docs-build
	$(BIN)/pytest

# The documentation site: the OpenAPI document is exported from create_app() (no database or
# broker needed), then MkDocs builds with --strict (a broken reference fails the build).
docs-build: install
	$(BIN)/conveyor openapi > docs/openapi.json
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs: install
	$(BIN)/conveyor openapi > docs/openapi.json
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

clean:
	rm -rf $(VENV) .conveyor .pytest_cache .mypy_cache .ruff_cache
