# Two commands matter: `make demo` and `make test`. Both build .venv from pyproject.toml first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: demo test bench fuzz lint fmt clean browser

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed (set PYTHON=...)")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,dev]'
	@rm -f $(VENV)/.installed-* && touch $@

demo: $(STAMP)
	$(VENV)/bin/sgb demo

# The browser tests drive Debian's Chromium. CI (CI=true) installs it when missing; elsewhere
# they skip with a message unless it is installed (apt-get install chromium).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$CI" = "true" ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Chromium for the browser tests"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	      (sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	      echo "could not install Chromium: the browser tests will fail"; \
	  else echo "no Chromium: the browser tests will be skipped (apt-get install chromium)"; fi; }

# The suite runs after the static checks: a broken layer or a type error fails fast. Four workers on
# two cores: the tests mostly wait on their own nats-server, broker and subprocesses, not the CPU.
TEST_WORKERS ?= 4
test: lint browser
	$(PY) -m pytest -q -n $(TEST_WORKERS)

# Throughput, the latency curve (BENCH_ARGS=--quick for a short run) and the rest; results in
# bench/results.json, the curve drawn in bench/latency.png (matplotlib, the `bench` extra).
BENCH_ARGS ?=
bench: $(STAMP)
	@$(PY) -c 'import matplotlib' 2>/dev/null || $(PY) -m pip install --quiet --disable-pip-version-check -e '.[bench]'
	$(PY) -m bench $(BENCH_ARGS)

# Hostile input at scale (CI does not run it): coverage-guided fuzzing of the parsing layer with
# atheris, then mutated and random messages through a real broker (results in bench/fuzz-results.json).
FUZZ_RUNS   ?= 200000
FUZZ_INPUTS ?= 100000
fuzz: $(STAMP)
	@$(PY) -c 'import atheris' 2>/dev/null || $(PY) -m pip install --quiet --disable-pip-version-check -e '.[fuzz]'
	$(PY) -m bench.fuzz_parse -runs=$(FUZZ_RUNS)
	$(PY) -m bench.fuzz --inputs $(FUZZ_INPUTS)

lint: $(STAMP)
	$(VENV)/bin/ruff check broker adapters tests bench docs
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

fmt: $(STAMP)
	$(VENV)/bin/ruff check --fix broker adapters tests bench

clean:
	rm -rf $(VENV) .sgb .pytest_cache .mypy_cache .ruff_cache
