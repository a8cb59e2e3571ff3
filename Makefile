# The two commands of the README: `make demo` and `make test`.
# Everything else they need (virtualenv, Kafka jars, ZooKeeper, Redis, Jaeger)
# is installed and started by the project itself on first use.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: demo test install stack stack-down lint unit integration faults bench bench-compare clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (need Python >= 3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

stack: install
	$(BIN)/kct stack up

stack-down: install
	$(BIN)/kct stack down

demo: stack
	$(BIN)/kct demo

lint: install
	$(BIN)/ruff check toolkit connectors tests benchmarks examples
	$(BIN)/mypy

unit: install
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

integration: stack
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

# The fault suite at full size (`make test` runs it reduced). Its replicated
# cases bring up their own `kct stack up --cluster` and take it down after.
faults: stack
	KCT_FAULTS_SIZE=full $(BIN)/pytest tests/faults $(PYTEST_ARGS)

bench: stack
	$(BIN)/python -m benchmarks.run $(if $(QUICK),--quick,)

# The ratios of benchmarks/results.json that moved beyond their noise since the last run.
bench-compare: install
	$(BIN)/python -m benchmarks.compare

test: lint stack
	$(BIN)/pytest tests $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
