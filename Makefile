# ssm_distill: every command a user or CI needs. `make demo` and `make test` do all the set-up first.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# the stamp's name is a hash of what the install depends on (not a file prerequisite: nbdev-export rewrites
# pyproject.toml with the same content, which must not trigger a reinstall)
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | md5sum | cut -c1-8)
# CPU torch on this machine kind lies on local disk; any other request pulls a multi-GB CUDA build.
TORCH_CPU ?= torch==2.13.0

# the reproductions (experiments/README.md): about 3.5 hours (one process at a time); each script also has --quick
EXPERIMENTS := stage1_sweep mohawk_stages matrix_classes matrix_mixers which_student hybrids task_agnostic selection

.PHONY: setup demo test lint tutorials experiments test-slow test-cuda test-compat test-browser constraints export clean-nbs check-export check-clean readme gpu bench docs docs-quick

setup: $(STAMP)

$(STAMP):
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# install CPU torch first, only when no torch is present, so nothing pulls a CUDA build
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_CPU)"
	# the exact versions of the last green run (make constraints refreshes the file)
	$(BIN)/python -m pip install -q -e ".[dev]" -c constraints.txt
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

## (1) the main job: the demo distillation on the built-in defaults
# --resume: a second `make demo` continues the first (or, when it finished, reports it again); DEMO_ARGS=--overwrite starts afresh
demo: setup
	$(BIN)/ssm-distill demo --out runs/demo --resume $(DEMO_ARGS)

# many tiny ops on 2 cores: one thread per test process avoids oversubscription (nbdev-test runs 2 in parallel)
test test-slow test-cuda: export OMP_NUM_THREADS = 1
# the tutorials (nbs/tutorials/) run with their QUICK budgets in the test suite; `make tutorials` runs them in full
test: export SSM_DISTILL_QUICK = 1

## (2) the whole default test suite (what CI runs)
test: setup check-export check-clean lint
	$(BIN)/nbdev-test --n-workers 2 --timing
	$(BIN)/python -m pytest tests/ -q

## the tutorials top to bottom at full size, their outputs saved in place (what is committed): minutes each
tutorials: setup
	for nb in nbs/tutorials/*.ipynb; do OMP_NUM_THREADS=1 $(BIN)/jupyter nbconvert --to notebook --execute --inplace \
	  --ExecutePreprocessor.timeout=-1 "$$nb" || exit 1; done
	$(BIN)/nbdev-clean
	$(BIN)/python tools/check_outputs.py --strip-widgets

## the Hugging Face integration tests with the oldest and the newest transformers / accelerate / datasets,
## each in a throwaway venv under .venv-compat/ (results in runs/compat/)
test-compat: setup
	$(BIN)/python tools/compat.py oldest newest

## after a green `make test` with newer packages: record their exact versions for CI and users
constraints: setup
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^ssm.distill' > constraints.txt

test-slow: setup
	$(BIN)/nbdev-test --n-workers 2 --flags slow
	$(BIN)/python -m pytest tests/ -q -m slow

test-cuda: setup
	$(BIN)/nbdev-test --n-workers 1 --flags "cuda"
	$(BIN)/python -m pytest tests/ -q -m cuda

export: setup
	$(BIN)/nbdev-export
	$(BIN)/nbdev-clean
	$(BIN)/python tools/kernelspec.py
	$(BIN)/python tools/readme.py

# notebooks are the source of truth: exporting must leave ssm_distill/ and README.md unchanged
check-export: setup
	$(BIN)/nbdev-export
	$(BIN)/python tools/readme.py
	@if [ -n "$$(git status --porcelain -- ssm_distill README.md)" ]; then \
	  git status --porcelain -- ssm_distill README.md; \
	  echo "ssm_distill/ or README.md differ from the notebooks: run 'make export' and commit."; exit 1; fi

## ruff: lint the exported package, tools, benchmarks, experiments and tests; format-check the tools (pyproject.toml [tool.ruff])
lint: setup
	$(BIN)/ruff check --no-cache ssm_distill tools benchmarks experiments tests
	$(BIN)/ruff format --no-cache --check tools

# notebooks are committed clean (no outputs, no execution counts, no widget state) and at most 1.5 MB (1,500,000 bytes) each
check-clean: setup
	$(BIN)/nbdev-clean
	$(BIN)/python tools/check_outputs.py
	$(BIN)/python tools/kernelspec.py --check
	@if [ -n "$$(git status --porcelain -- nbs)" ]; then \
	  git status --porcelain -- nbs; \
	  echo "notebooks are not clean: run 'make export' (it runs nbdev-clean) and commit."; exit 1; fi

## (3) the workbench in a real browser: JupyterLab runs nbs/10_widgets.ipynb in headless Chromium (Debian's
## package, driven by Playwright's Python package; no browser download), trains from the panel, then drives the
## SelectionExplorer, then runs MOHAWK stage 1 alone and checks in MixingExplorer that the student's matrix follows
## the teacher's on a previous-token head (Pearson >= 0.5); runs/browser/*.png
CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
test-browser: export OMP_NUM_THREADS = 1
test-browser: setup $(CHROMIUM)
	$(BIN)/python -c "import playwright" 2>/dev/null || $(BIN)/python -m pip install -q -e ".[dev,browser]" -c constraints.txt
	CHROMIUM=$(CHROMIUM) $(BIN)/python tools/browser_test.py

$(CHROMIUM):
	$(SUDO) apt-get update
	$(SUDO) apt-get install -y --no-install-recommends chromium chromium-driver

## the documentation site: every notebook as a static HTML page in _docs/ (open _docs/index.html), figures drawn by a
## local plotly.js. Quarto (what nbdev-docs needs) cannot be installed offline: PyPI's quarto-cli is a source package
## whose build downloads Quarto from GitHub. API notebooks run as nbdev-test runs them (slow/cuda cells skipped);
## tutorials keep the outputs of their full run. A cell that raises, or an error output in a tutorial, fails the build.
docs docs-quick: export OMP_NUM_THREADS = 1
docs: setup
	$(BIN)/python tools/docs.py --out _docs --workers 2

## the same pages without running the API notebooks (prose, code and the tutorials' outputs; about a minute)
docs-quick: setup
	$(BIN)/python tools/docs.py --out _docs --no-execute

## GPU machines: fast kernels. Needs a CUDA build of torch already installed.
gpu: setup
	$(BIN)/python -m pip install "flash-linear-attention[cuda]"
	$(BIN)/python -m pip install --no-build-isolation mamba-ssm causal-conv1d

bench: setup
	$(BIN)/python benchmarks/kernels.py

## the papers' findings reproduced at this scale (results in experiments/results/, the table in experiments/README.md)
experiments: export OMP_NUM_THREADS = 1
experiments: setup
	cd experiments && for e in $(EXPERIMENTS); do PYTHONPATH=.. ../$(BIN)/python $$e.py || exit 1; done
