# The README's commands. `make test` installs into .venv (created when missing) and runs the
# suite; `make demo` arrives with the training issue.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.flan-jax-installed

.PHONY: install test bench vocab clean

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

# Retrain the shipped SentencePiece model from the synthetic corpus (byte-for-byte the same).
vocab: install
	$(PY) -m flan_jax.data.train_vocab

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
