# The two commands of the README: `make demo` (the main job on the embedded default) and `make test`.
# Each creates its own virtual environment on first use: torch first, then the package with its extras.
# torch comes from the package index pip is configured with; on Linux x86-64 PyPI's torch wheel is the CUDA
# build (it runs on a CPU, but pulls in the nvidia-* CUDA packages, several GB). For the CPU-only wheel:
#   make clean && make test TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
PYTHON ?= python3
VENV ?= .venv
TORCH_INDEX_URL ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sdekit-installed

.PHONY: demo test setup docs lint clean

# Reinstalls when pyproject.toml (dependencies, extras) or this file (the torch pin) changes.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(PY) -m pip install --quiet -e ".[test,bench]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sdekit demo

test: $(STAMP)
	$(PY) -m pytest

# The documentation site, into site/ (the docs extra comes with the test extra that setup installs).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

lint: $(STAMP)
	$(PY) -m pip install --quiet ruff
	$(VENV)/bin/ruff check sdekit kernels tests benchmarks scripts

clean:
	rm -rf $(VENV) build site *.egg-info
