# One entry point per job. Each target creates .venv on first use (and again when the
# dependency files change), installs the project with the pinned versions, then runs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
# two workers share the two cores (tests/conftest.py gives each one torch thread)
PYTEST_WORKERS ?= 2

.PHONY: install lint test test-quick demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt torch torchvision
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

# ruff, configured in pyproject.toml: lint rules and the formatter's layout (`ruff format .` applies it)
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: $(STAMP)
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

test-quick: $(STAMP)
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) -m "not slow" $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) -m common demo

bench: $(STAMP)
	$(PY) benchmarks/complexity.py
	$(PY) benchmarks/mixer_scaling.py
	$(PY) benchmarks/volume_inference.py --slices 100 --repeats 3

clean:
	rm -rf $(VENV) .pytest_cache

# MONAI Label (docs/monailabel.md). Its pins (numpy<2, pydicom<3, jsonschema<4) clash with .venv, so it gets its own
# environment; the project goes in without dependencies. sam2, a MONAI Label dependency, builds against the
# installed torch (CPU-only build, no downloads). The server runs as `python -m monailabel.main`: the
# `monailabel` launcher script runs whichever `python` is first on PATH.
LABEL_VENV   := .venv-label
LABEL_PY     := $(LABEL_VENV)/bin/python
LABEL_STAMP  := $(LABEL_VENV)/.installed
STUDIES      ?=
MODELS       ?= all
LABEL_HOST   ?= 127.0.0.1
LABEL_PORT   ?= 8000

.PHONY: label-env label

label-env: $(LABEL_STAMP)

$(LABEL_STAMP): requirements-label.txt constraints-label.txt pyproject.toml
	test -x $(LABEL_PY) || $(PYTHON) -m venv $(LABEL_VENV)
	$(LABEL_PY) -m pip install --quiet -c constraints-label.txt setuptools torch torchvision
	SAM2_BUILD_CUDA=0 $(LABEL_PY) -m pip install --quiet --no-build-isolation -c constraints-label.txt -r requirements-label.txt
	$(LABEL_PY) -m pip install --quiet --no-deps -e .
	touch $(LABEL_STAMP)

label: $(LABEL_STAMP)
	@test -n "$(STUDIES)" || { echo "usage: make label STUDIES=DIR [MODELS=all|name,name] [LABEL_HOST=127.0.0.1] [LABEL_PORT=8000]"; exit 2; }
	$(LABEL_PY) -m monailabel.main start_server --app monailabel_app --studies $(STUDIES) \
		--conf models $(MODELS) --host $(LABEL_HOST) --port $(LABEL_PORT)
