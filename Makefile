# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

BENCHES := cost journal-cpu memory throughput storm recovery cluster

.PHONY: demo test lint docs browser unit integration chaos bench $(addprefix bench-,$(BENCHES)) clean

$(VENV)/.core: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
		|| { echo "kompensa-workers needs Python 3.10 or newer (set PYTHON=...)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	@touch $@

$(VENV)/.dev: $(VENV)/.core
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

demo: $(VENV)/.core
	$(BIN)/python -m kompensa_workers.ops.demo $(ARGS)

lint: $(VENV)/.dev
	$(BIN)/ruff check kompensa_workers tests integrations examples scripts benchmarks
	$(BIN)/mypy

unit: $(VENV)/.dev
	$(BIN)/python -m pytest tests -n 4 --dist loadgroup

integration: $(VENV)/.dev
	$(BIN)/python scripts/services.py
	$(BIN)/python -m pytest integrations -n 4 --dist loadgroup

# The docs site (MkDocs): every warning is an error.
docs: $(VENV)/.dev
	$(BIN)/mkdocs build --strict --quiet --site-dir site

# Chromium and chromedriver for the dashboard's browser tests (installed when missing).
browser:
	$(PYTHON) scripts/browser.py

test: lint docs browser
	$(BIN)/python scripts/services.py
	$(BIN)/python -m pytest tests integrations -n 4 --dist loadgroup

# The chaos suite's longer run; its figures go to benchmarks/RESULTS.md.
chaos: $(VENV)/.dev
	$(BIN)/python scripts/services.py
	KW_CHAOS_SECONDS=$${KW_CHAOS_SECONDS:-120} KW_CHAOS_SAGAS=$${KW_CHAOS_SAGAS:-1000} \
		KW_CHAOS_RESULTS=benchmarks/RESULTS.md $(BIN)/python -m pytest integrations/test_chaos.py

# Each writes its section of benchmarks/RESULTS.md; ARGS=--quick for a smoke run.
bench: $(addprefix bench-,$(BENCHES))

$(addprefix bench-,$(BENCHES)): bench-%: $(VENV)/.dev
	$(BIN)/python scripts/services.py
	$(BIN)/python -m benchmarks.$(subst -,_,$*) $(ARGS)

clean:
	rm -rf $(VENV) site .mypy_cache .ruff_cache .pytest_cache .hypothesis
