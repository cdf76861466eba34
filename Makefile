# The two commands a newcomer runs: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast setup clean

setup: $(STAMP)

# Reinstall when the dependency files change; constraints.txt pins the versions tested together.
# A new .venv takes about 7 GB (pip installs torch's CUDA build): say so before pip runs out of disk.
NEED_GB ?= 8
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || free=$$(df -Pk . | awk 'NR==2 {print int($$4 / 1048576)}'); \
	  if [ -n "$${free:-}" ] && [ "$$free" -lt $(NEED_GB) ]; then \
	    echo "setup: a new $(VENV) needs about 7 GB (torch's CUDA build); $$free GB are free here. Free some disk and run again." >&2; \
	    exit 1; fi
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

# Main job, offline: the demo phase sweep on mnist1d (72 trials on local Ray, logged to
# ./mlflow.db), then the Parquet export, the phase fit and the HTML report in demo_out/.
# Run it again and it resumes (or reuses) the same sweep.
demo: $(STAMP)
	$(BIN)/minima run sweeps/demo.yaml --resume
	$(BIN)/minima report demo --out demo_out

# The whole suite, slow end-to-end tests included (CI runs exactly this).
test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

clean:
	rm -rf $(VENV) .pytest_cache
