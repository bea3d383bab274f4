# Two commands a new user needs: `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: install demo test unit integration bench simulate clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall when the dependency list or the pins change.
$(STAMP): $(PY) pyproject.toml constraints.txt
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/warmstart demo

# Two test processes: most integration tests wait on real workers, so two share 2 cores well
# (6.5 min against 10 for one process on this project's 2-core machines).
test: $(STAMP)
	$(PY) -m pytest -q -n 2

unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

integration: $(STAMP)
	$(PY) -m pytest -q tests/integration

bench: $(STAMP)
	$(VENV)/bin/warmstart bench restore --size-mb 256 --json bench-restore.json

simulate: $(STAMP)
	$(VENV)/bin/warmstart simulate ../shared/traces/azure2019-500x8h --json simulate.json

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
