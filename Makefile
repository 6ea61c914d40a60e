# nnlab — two commands on a fresh machine: `make demo` (the demo sweep) and `make test`.
# Both create .venv and install nnlab into it on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.docs-installed
# what CI builds with: a warning, a broken link or cross-reference, a page outside the toctree fails
SPHINXOPTS ?= -W --keep-going -n -q
# the MLflow UI's port: `make ui PORT=5001`; `make demo PORT=5001` prints links to that port.
# MLFLOW_PORT is MLflow's own variable (mlflow ui reads it), and the one nnlab's printed link reads
PORT   ?= $(or $(MLFLOW_PORT),5000)
export MLFLOW_PORT := $(PORT)

.PHONY: install demo test test-fast ui bench report docs clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m nnlab.run -m activation=relu,tanh

# The tiers are described in tests/conftest.py. test-fast: no daemon and no long real process (a few minutes);
# test: everything, what CI runs. Whole test files are spread over JOBS pytest-xdist workers (--dist loadfile),
# so a file's module fixtures and the cluster tests' session daemons are built once, in one worker.
# JOBS=0 runs in one process.
JOBS ?= 2
PYTEST := $(PY) -m pytest -n $(JOBS) --dist loadfile

test: $(STAMP)
	$(PYTEST)

test-fast: $(STAMP)
	$(PYTEST) -m "not slow"

ui: $(STAMP)
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --port $(PORT)

bench: $(STAMP)
	$(PY) benchmarks/bench_core.py
	$(PY) benchmarks/bench_tracking.py
	$(PY) benchmarks/bench_sweep.py
	$(PY) benchmarks/bench_faults.py
	$(PY) benchmarks/bench_startup.py

# the init_depth study (135 runs, 2 workers) and its report in reports/init_depth/
report: $(STAMP)
	$(PY) -m nnlab.run -m +experiment=init_depth hydra/launcher=joblib hydra.launcher.n_jobs=2
	$(PY) -m nnlab.report --experiment init_depth --out reports/init_depth

# the manual (docs/, Sphinx + MyST + pydata-sphinx-theme) into docs/_build/html; installs nnlab[docs] first
docs: $(DOCS_STAMP)
	$(PY) -m sphinx -b html -c docs $(SPHINXOPTS) . docs/_build/html
	@echo "docs: open docs/_build/html/index.html"

$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e '.[dev,docs]'
	touch $(DOCS_STAMP)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
