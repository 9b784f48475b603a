# The README's commands: `make demo` trains, evaluates and generates on the built-in
# mixture; `make test` runs the suite. Both install into .venv (created when missing).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.flan-jax-installed

.PHONY: install test demo bench bench-train bench-data bench-restore bench-lora bench-tokens vocab clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

test: install
	$(PY) -m pytest -q

# Train a small T5 on the built-in instruction tasks (under 8 minutes on 2 CPU cores), evaluate
# it, print generations; leaves $(DEMO_DIR) for `flan-jax infer`.
DEMO_DIR ?= /tmp/flan_jax_demo
demo: install
	rm -rf $(DEMO_DIR)  # a fresh run each time (rerunning `flan-jax train` would resume it)
	$(VENV)/bin/flan-jax train --gin_file=runs/demo.gin --gin.train.model_dir="'$(DEMO_DIR)'" \
		--generations 2
	@echo "try: $(VENV)/bin/flan-jax infer --checkpoint $(DEMO_DIR) --input 'What is 12 plus 30?'"

bench: install
	$(PY) bench/model_step.py

bench-train: install
	$(PY) bench/train_step.py

bench-data: install
	$(PY) bench/data_pipeline.py

# Peak host memory of a T5 1.1-base finetune (HF and flan-jax dirs) against training from scratch.
bench-restore: install
	$(PY) bench/restore_memory.py

# LoRA vs full finetuning: T5 1.1-base step memory, XL / XXL plans, quality on a JSONL task.
bench-lora: install
	$(PY) bench/lora.py --json docs/lora.json

bench-tokens: install
	$(PY) bench/galactica_tokens.py

# Retrain the shipped SentencePiece model from the synthetic corpus (byte-for-byte the same).
vocab: install
	$(PY) -m flan_jax.data.train_vocab

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
