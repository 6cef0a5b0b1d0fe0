# The two commands of the README: `make demo` (the main job on the embedded default) and `make test`.
# Each creates its own virtual environment on first use: the CPU build of torch first (so pip never fetches
# a multi-gigabyte CUDA build), then the package with its extras.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sdekit-installed

.PHONY: demo test setup lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test,bench]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sdekit demo

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m pip install --quiet ruff
	$(VENV)/bin/ruff check sdekit kernels tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
