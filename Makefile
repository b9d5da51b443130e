# Two entry points (see README.md): `make demo` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# The main job: the guided sync of the bundled sample against the built-in Braze sandbox, in
# JupyterLab (the wizard in notebooks/03_guided_sync.ipynb); HEADLESS=1 runs the same steps in the
# terminal and prints the plan, the sync report and the verification.
demo: $(STAMP)
ifeq ($(HEADLESS),1)
	$(PY) -m toolkit demo
else
	$(VENV)/bin/jupyter lab notebooks/03_guided_sync.ipynb
endif

# Every test: unit, sandbox integration, widget, reliability, and every notebook under nbval.
test: $(STAMP)
	bash scripts/install-browser.sh
	bash scripts/install-postgresql.sh
	$(PY) -m pytest tests notebooks --nbval --nbval-sanitize-with notebooks/sanitize.cfg -p no:cacheprovider

bench: $(STAMP)
	for b in bench/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
