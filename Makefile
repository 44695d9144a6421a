# Two commands for a fresh machine: `make demo` and `make test`. Each creates or updates
# the local virtual environment first (a no-op when it is up to date).

PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.lvmlt-installed

.PHONY: demo test test-all lint venv weights fashion-mnist chromium clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,train,sam,data,serve]'
	touch $(STAMP)

weights: $(STAMP)
	$(PY) -m lvmlt weights fetch mobilesam

demo: $(STAMP) weights
	$(PY) -m lvmlt.experiments.demo

# Two pytest workers, a test file each: the tests are mostly single-threaded (1.4x faster on 2 cores).
test: $(STAMP) weights chromium
	$(PY) -m pytest -x -n 2 --dist loadfile

test-all: $(STAMP) weights
	$(PY) -m pytest --run-slow -n 2 --dist loadfile

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks

# Fashion-MNIST ships as a Debian package; only needed when that dataset is used.
fashion-mnist:
	@test -d /usr/share/datasets/fashion-mnist || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get install -y dataset-fashion-mnist || { apt-get update && apt-get install -y dataset-fashion-mnist; }; \
	  else sudo apt-get install -y dataset-fashion-mnist; fi; }

# Debian's chromium renders the HTML report in a test (skipped when it is missing).
chromium:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get install -y chromium || { apt-get update && apt-get install -y chromium; }; \
	  else sudo apt-get install -y chromium || echo "chromium not installed: the browser test will be skipped"; fi; }

clean:
	rm -rf $(VENV) runs .pytest_cache

# The prepared GPU check (benchmarks/gpu_check.sh says what it runs and writes); where no
# CUDA device is visible it prints one line and exits 0.
.PHONY: gpu-check
gpu-check:
	bash benchmarks/gpu_check.sh
