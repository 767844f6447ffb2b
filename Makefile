# Two commands do all set-up on a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lab models bench chromium llamacpp clean-venv

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

# llama-cpp-python has no wheel on PyPI: build it once (~6 min on 2 cores) into a cache outside the clone,
# then every later install (a fresh venv, CI on a clean clone) takes the cached wheel
WHEELS ?= $(HOME)/.cache/workbench/wheels
LLAMA_CPP_VERSION := 0.3.36
$(VENV)/.llamacpp: $(STAMP)
	ls $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1 || \
		CMAKE_BUILD_PARALLEL_LEVEL=2 $(PY) -m pip wheel --quiet --no-deps "llama-cpp-python==$(LLAMA_CPP_VERSION)" -w $(WHEELS)
	$(PY) -m pip install --quiet --find-links $(WHEELS) "llama-cpp-python[server]==$(LLAMA_CPP_VERSION)"
	touch $@
llamacpp: $(VENV)/.llamacpp

test: models chromium llamacpp
	$(PY) -m pytest

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--ServerApp.allow_root=True)

bench: models
	$(PY) benchmarks/bench_generate.py

clean-venv:
	rm -rf $(VENV)
