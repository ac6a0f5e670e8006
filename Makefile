# Set-up and entry points. `make test` and `make demo` work on a fresh machine: they create the
# virtual environment and install the package with what it needs first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv test test-fast demo bench clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -rs tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -rs -m "not slow" tests

demo: $(STAMP)
	$(PY) launch/pipeline.py --config=configs/sandbox_es.py --workdir=workdirs/sandbox_es

bench: $(STAMP)
	$(PY) benchmarks/sampling_vs_hf.py
	$(PY) benchmarks/dpo_vs_trl.py
	$(PY) benchmarks/search_batched_vs_sequential.py

clean:
	rm -rf $(VENV) workdirs .pytest_cache
