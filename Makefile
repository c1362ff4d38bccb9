# kneelib: one command to build the book, one to run the tests.
#   make book   -> .venv, install, default synthetic data, every notebook at `default`, HTML book
#                  (a chapter is re-executed only when its inputs changed; FORCE=1 re-executes all)
#   make test   -> install if needed, run the test suite
#   make smoke  -> the book at `smoke` parameters (seconds per notebook)
#   make bench  -> speed and memory benchmarks
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# The install stamp names the content of the requirements, not their mtime: a fresh
# clone (new mtimes) reuses an up-to-date venv without reinstalling.
REQ_HASH := $(shell cat requirements.txt pyproject.toml 2>/dev/null | sha256sum | cut -c1-16)
STAMP := $(VENV)/.kneelib-installed-$(REQ_HASH)

.PHONY: install book smoke test bench data clean sync-notebooks

$(STAMP):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

install: $(STAMP)

data: install
	$(PY) -m kneelib synth --preset default
	$(PY) -m kneelib.qmri.cohort_maps --preset default --seed 0 --jobs 2

book: data
	$(PY) -m kneelib book --params default $(if $(FORCE),--force,)

smoke: install
	$(PY) -m kneelib book --params smoke

test: install
	$(PY) -m pytest

bench: install
	$(PY) -m pytest benchmarks -o python_files='bench_*.py' --benchmark-only --benchmark-columns=min,mean,max,rounds -s

sync-notebooks: install
	$(VENV)/bin/jupytext --sync notebooks/*.ipynb

clean:
	rm -rf book/_build book/_executed
