# Two commands do all set-up on a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lab models bench chromium clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# the CPU build of torch first: a plain `torch` requirement would pull a multi-GB CUDA build
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

models: $(STAMP)
	$(PY) -m workbench models pull smollm2-135m

demo: models
	$(PY) -m workbench demo

# tests/test_browser.py drives Debian's chromium through playwright (never a browser `playwright install` downloads)
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
chromium:
	test -x /usr/bin/chromium || ($(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null)

test: models chromium
	$(PY) -m pytest

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--ServerApp.allow_root=True)

bench: models
	$(PY) benchmarks/bench_generate.py

clean-venv:
	rm -rf $(VENV)
