# kneelib: one command to build the book, one to run the tests.
#   make book   -> .venv, install, default synthetic data, every notebook at `default`, HTML book
#   make test   -> install if needed, run the test suite
#   make smoke  -> the book at `smoke` parameters (seconds per notebook)
#   make bench  -> speed and memory benchmarks
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kneelib-installed

.PHONY: install book smoke test bench data clean sync-notebooks

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

install: $(STAMP)

data: install
	$(PY) -m kneelib synth --preset default

book: install
	$(PY) -m kneelib book --params default

smoke: install
	$(PY) -m kneelib book --params smoke

test: install
	$(PY) -m pytest

bench: install
	$(PY) -m pytest benchmarks --benchmark-only --benchmark-columns=min,mean,max,rounds -s

sync-notebooks: install
	$(VENV)/bin/jupytext --sync notebooks/*.ipynb

clean:
	rm -rf book/_build book/_executed
