# Two entry points: `make demo` runs the demo campaign, `make test` runs the tests.
# Both create the virtual environment in .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN ?= torch==2.13.0

.PHONY: demo test test-reliability docs venv clean

$(BIN)/nas: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -e '.[test,docs,export]'
	touch $(BIN)/nas

venv: $(BIN)/nas

demo: venv
	$(BIN)/nas demo --out runs/demo

# The whole suite: unit and integration tests, then the reliability suite (kills, three workers on a
# real PostgreSQL and on a journal file, bad inputs). ci/install_graphviz.sh installs Graphviz for the
# DAG layouts where it can. ci/install_postgres.sh installs and starts the
# server where it can (root or sudo); elsewhere the PostgreSQL tests are skipped with a visible
# message, and under CI (CI=true) they fail instead.
test: venv
	bash ci/install_graphviz.sh
	NAS_TEST_POSTGRES_URL="$${NAS_TEST_POSTGRES_URL:-$$(bash ci/install_postgres.sh || true)}" \
		$(BIN)/python -m pytest -q -m "not gpu" tests

# The reliability suite alone.
test-reliability: venv
	NAS_TEST_POSTGRES_URL="$${NAS_TEST_POSTGRES_URL:-$$(bash ci/install_postgres.sh)}" \
		$(BIN)/python -m pytest -q -rf tests/reliability

# The docs site (docs/, mkdocs.yml) into site/; tests/test_docs.py builds it with --strict as well.
docs: venv
	$(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) runs site
