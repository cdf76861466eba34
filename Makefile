# The two commands a newcomer runs: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast setup clean

setup: $(STAMP)

# Reinstall when the dependency files change; constraints.txt pins the versions tested together.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

# Main job: the paper's effect on the embedded dataset, offline (mnist1d, ~1 min on 2 cores).
demo: $(STAMP)
	@echo "== from a random init =="
	$(BIN)/minima trial --set pretrain_epochs=0
	@echo "== after 100 epochs of random-label pretraining =="
	$(BIN)/minima trial --set pretrain_epochs=100

# The whole suite, slow end-to-end tests included (CI runs exactly this).
test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

clean:
	rm -rf $(VENV) .pytest_cache
