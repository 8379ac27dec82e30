# One entry point per job. Each target creates .venv on first use (and again when the
# dependency files change), installs the project with the pinned versions, then runs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
# two workers share the two cores (tests/conftest.py gives each one torch thread); tests marked with one
# xdist_group run on one worker (MONAI Label's: one builds .venv-label, none waits for it)
PYTEST_WORKERS ?= 2

.PHONY: install lint test test-quick demo bench clean pacs-deps

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

# the whole check CI runs (.ci/run): the lint first, then every test
test: lint pacs-deps
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup --durations=25 $(PYTEST_ARGS)

test-quick: $(STAMP) pacs-deps
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup -m "not slow" $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) -m common demo

bench: $(STAMP)
	$(PY) benchmarks/complexity.py
	$(PY) benchmarks/mixer_scaling.py
	$(PY) benchmarks/volume_inference.py --slices 100 --repeats 3
	$(PY) benchmarks/volume_memory.py --slices 100 600 --paths streamed bundle whole

clean:
	rm -rf $(VENV) .pytest_cache

# The PACS tests (tests/end_to_end/test_pacs.py) run a real Orthanc with its DICOMweb plugin: found on PATH or in /usr/sbin,
# else installed from the Debian packages when root (docs/pacs.md: without root).
GDLA_ORTHANC_DICOMWEB_PLUGIN ?= /usr/share/orthanc/plugins/libOrthancDicomWeb.so
export GDLA_ORTHANC_DICOMWEB_PLUGIN
pacs-deps:
	@if { command -v Orthanc || test -x /usr/sbin/Orthanc; } >/dev/null && test -f $(GDLA_ORTHANC_DICOMWEB_PLUGIN); then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc orthanc-dicomweb; \
	else echo "Orthanc and its DICOMweb plugin are missing: sudo apt-get install orthanc orthanc-dicomweb (docs/pacs.md)"; exit 1; fi

# MONAI Label (docs/monailabel.md). Its pins (numpy<2, pydicom<3, jsonschema<4) clash with .venv, so it gets its own
# environment; the project goes in without dependencies. sam2, a MONAI Label dependency, builds against the
# installed torch (CPU-only build, no downloads). The server runs as `python -m common.apps.label_server` (MONAI Label's
# own entry point without the packages its process never uses); the `monailabel` launcher script would run
# whichever `python` is first on PATH.
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
	@# both environments hold the same torch build (5 GB): files equal in content become one (util-linux hardlink)
	if [ -d $(VENV)/lib ] && command -v hardlink >/dev/null; then hardlink --ignore-time --quiet $(VENV)/lib $(LABEL_VENV)/lib; fi
	touch $(LABEL_STAMP)

label: $(LABEL_STAMP)
	@test -n "$(STUDIES)" || { echo "usage: make label STUDIES=DIR|http://HOST/dicom-web [MODELS=all|name,name] [LABEL_HOST=127.0.0.1] [LABEL_PORT=8000]"; exit 2; }
	PATH="$(abspath $(LABEL_VENV))/bin:$$PATH" $(LABEL_PY) -m common.apps.label_server start_server --app monailabel_app --studies $(STUDIES) \
		--conf models $(MODELS) --host $(LABEL_HOST) --port $(LABEL_PORT)
