# Set-up and checks, as a user runs them: `make run` serves the studio, `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WORKSPACE ?= studio-data
HOST ?= 127.0.0.1
PORT ?= 7860
# llama-cpp-python compiles from source (about 10 minutes on 2 cores, once: pip caches the wheel).
# We need no multimodal part. On a CUDA machine: make run CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_CUDA=on"
CMAKE_ARGS ?= -DLLAVA_BUILD=OFF
export CMAKE_ARGS

.PHONY: install install-test browser run lint test test-fast clean gpu gpu-smoke

install: $(VENV)/.installed

# torch first, pinned: asked for by another package, pip would pick a multi-GB build itself.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e .
	touch $@

install-test: $(VENV)/.installed-test

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -e '.[test]'
	touch $@

# Browser tests drive Debian's Chromium; install it where this machine lets us.
browser:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -q && apt-get install -y -q chromium; \
	else echo "note: /usr/bin/chromium is missing (apt-get install chromium); browser tests will be skipped"; fi

run: install
	$(BIN)/alignstudio prepare --workspace $(WORKSPACE)
	$(BIN)/alignstudio serve --workspace $(WORKSPACE) --host $(HOST) --port $(PORT)

lint: install-test
	$(BIN)/ruff check .

# The quick tests run in two processes (pytest-xdist), a test file at a time each, one thread
# each: most of them wait on a subprocess or a file, and two keep both cores of a small machine busy.
# The slow ones (training, browsers) are CPU-bound and run one at a time with every thread: run side
# by side they took longer in all (44 min against 40 on 2 cores), a browser test most (7x).
PYTEST = $(BIN)/python -m pytest -q
PARALLEL = OMP_NUM_THREADS=1 $(PYTEST) -n 2 --dist loadfile

test: lint browser
	$(PARALLEL) -m "not slow"
	$(PYTEST) -m slow

# Everything but the slow tests (browser, model families, training runs): a few minutes.
test-fast: lint
	$(PARALLEL) -m "not slow"

# On a CUDA machine: llama.cpp rebuilt with CUDA (pip would reuse its cached CPU wheel, and the
# install stamp would skip it) and bitsandbytes for 4-bit bases.
gpu: $(VENV)/.installed-gpu

$(VENV)/.installed-gpu: $(VENV)/.installed
	CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_CUDA=on" $(BIN)/pip install --no-cache-dir --force-reinstall --no-deps \
		"llama-cpp-python>=0.3.36"
	$(BIN)/pip install -e '.[gpu]'
	touch $@

# Every pipeline once on the GPU, with seconds and peak memory per stage (a few minutes). It needs
# the CUDA build of llama.cpp and bitsandbytes (`gpu`), and fails when either is missing rather
# than running those stages on the CPU and passing.
gpu-smoke: gpu
	$(BIN)/python scripts/gpu_smoke.py

clean:
	rm -rf $(VENV) *.egg-info
