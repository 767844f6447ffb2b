# Two commands do all set-up on a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lab models bench chromium llamacpp widgets clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# the CPU build of torch first: a plain `torch` requirement would pull a multi-GB CUDA build
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

models: $(STAMP)
	$(PY) -m workbench models pull smollm2-135m

demo: models widgets
	$(PY) -m workbench demo

# tests/test_browser.py drives Debian's chromium through playwright (never a browser `playwright install` downloads)
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
chromium:
	test -x /usr/bin/chromium || ($(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null)

# llama-cpp-python has no wheel on PyPI: build it once (~6 min on 2 cores) into a cache outside the clone,
# then every later install (a fresh venv, CI on a clean clone) takes the cached wheel.
# Built without ggml's AMX path: on an Intel Xeon with AMX (2026-12-07) it crashed the process (segfault) while
# repacking SmolLM2's q4_1 weights at load (the kind of crash in ggml-org/llama.cpp#19184); the AVX-512 kernels
# serve instead. gcc lets an explicit -mno-amx-* win over ggml's -march=native. The cache folder is named after
# the build, and pip's own wheel cache is bypassed, so a wheel built with AMX is never reused.
WHEELS ?= $(HOME)/.cache/workbench/wheels/llama-cpp-noamx
LLAMA_CPP_VERSION := 0.3.36
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
$(VENV)/.llamacpp: $(STAMP)
	ls $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1 || \
		CMAKE_BUILD_PARALLEL_LEVEL=2 CMAKE_ARGS='-DCMAKE_C_FLAGS="$(NO_AMX)" -DCMAKE_CXX_FLAGS="$(NO_AMX)"' \
		$(PY) -m pip wheel --quiet --no-cache-dir --no-deps "llama-cpp-python==$(LLAMA_CPP_VERSION)" -w $(WHEELS)
	$(PY) -m pip install --quiet --find-links $(WHEELS) "llama-cpp-python[server]==$(LLAMA_CPP_VERSION)"
	touch $@
llamacpp: $(VENV)/.llamacpp

# The HTML reports draw saved widget state (the explorer, the training panel) with the network off: workbench/report.py
# inlines require.js and @jupyter-widgets/html-manager's AMD bundle (1.x goes with ipywidgets 8) into every report
# that has widgets. Both come from the npm registry (`npm pack`: the tarball only, no dependency tree), unpacked into
# the venv at $(WIDGETS), where report.py looks (sys.prefix/share/workbench/widgets). anywidget's front-end (for
# plotly's FigureWidget) ships in the anywidget Python package itself, at the version the kernel used.
WIDGETS := $(VENV)/share/workbench/widgets
HTML_MANAGER_VERSION := 1.0.15
REQUIREJS_VERSION := 2.3.8
$(WIDGETS)/.installed-$(HTML_MANAGER_VERSION)-$(REQUIREJS_VERSION): | $(STAMP)  # the venv must exist, nothing more
	command -v npm >/dev/null || ($(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq npm >/dev/null)
	rm -rf $(WIDGETS) && mkdir -p $(WIDGETS)/npm
	cd $(WIDGETS)/npm && npm pack --silent @jupyter-widgets/html-manager@$(HTML_MANAGER_VERSION) requirejs@$(REQUIREJS_VERSION) >/dev/null
	# embed-amd.js and the icon fonts it names (report.py inlines the woff2 ones), require.js
	tar -xzf $(WIDGETS)/npm/jupyter-widgets-html-manager-$(HTML_MANAGER_VERSION).tgz -C $(WIDGETS) --strip-components=2 \
		--wildcards package/dist/embed-amd.js 'package/dist/*.woff2'
	tar -xzf $(WIDGETS)/npm/requirejs-$(REQUIREJS_VERSION).tgz -C $(WIDGETS) --strip-components=1 package/require.js
	rm -rf $(WIDGETS)/npm
	touch $@
widgets: $(WIDGETS)/.installed-$(HTML_MANAGER_VERSION)-$(REQUIREJS_VERSION)

test: models chromium llamacpp widgets
	$(PY) -m pytest

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--ServerApp.allow_root=True)

# the one table for all three workloads (generation, judging, fine-tuning) in fp32 and, where the CPU has native
# bf16, bf16; the detailed benchmarks run on their own: benchmarks/bench_generate.py, bench_judge.py,
# bench_train.py, bench_dpo.py, bench_metrics.py, bench_explorer.py, bench_backends.py, profile_engine.py
bench: models
	$(PY) benchmarks/bench.py --dtype both

clean-venv:
	rm -rf $(VENV)
