# The README's commands. `make test` installs into .venv (created when missing) and runs the
# suite; `make demo` arrives with the training issue.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.flan-jax-installed

.PHONY: install test bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) bench/model_step.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
