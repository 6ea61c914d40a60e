# nnlab — two commands on a fresh machine: `make demo` (the demo sweep) and `make test`.
# Both create .venv and install nnlab into it on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast ui bench report clean

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
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db

bench: $(STAMP)
	$(PY) benchmarks/bench_core.py
	$(PY) benchmarks/bench_tracking.py
	$(PY) benchmarks/bench_sweep.py
	$(PY) benchmarks/bench_faults.py

# the init_depth study (135 runs, 2 workers) and its report in reports/init_depth/
report: $(STAMP)
	$(PY) -m nnlab.run -m +experiment=init_depth hydra/launcher=joblib hydra.launcher.n_jobs=2
	$(PY) -m nnlab.report --experiment init_depth --out reports/init_depth

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
