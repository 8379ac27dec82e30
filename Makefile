# One entry point per job. Each target creates .venv on first use (and again when the
# dependency files change), installs the project with the pinned versions, then runs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install test test-quick demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt torch torchvision
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-quick: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) -m common demo

bench: $(STAMP)
	$(PY) benchmarks/complexity.py
	$(PY) benchmarks/mixer_scaling.py

clean:
	rm -rf $(VENV) .pytest_cache
