# pgm_jax: two commands on a fresh machine.
#   make demo   create .venv, train a small PGM on the bundled Python docs (CPU), sample
#   make demo-distill  distil the demo run with SDTT (CPU), then gen. perplexity (AR judge) and
#                      entropy of teacher and student at 8 / 16 / 32 sampling steps
#   make demo-downstream  lm-eval (pgm_jax.harness) on local tasks built from held-out demo text:
#                         accuracy +- stderr of the PGM, MDLM and AR demo runs in one table
#   make demo-images   train a class-conditional image PGM on scikit-learn's 8x8 digits (CPU),
#                      sample a PNG grid (one row per digit)
#   make test   create .venv with the dev extras, run the test suite (8 fake CPU devices)
#   make compare   PGM vs MDLM, complement-MDLM and AR at matched size, each at its swept lr
#                  (benchmarks/compare.py; table + JSON + plot in $(COMPARE_DIR))
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= runs/demo
DIGITS_DIR ?= runs/digits
DISTILL_DIR ?= $(DEMO_DIR)-distill
AR_DIR ?= $(DEMO_DIR)-ar
COMPARE_DIR ?= runs/compare

.PHONY: demo demo-mdlm demo-distill demo-downstream demo-images compare test lint clean-demo

$(VENV)/.runtime: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.dev: requirements-dev.txt requirements.txt $(VENV)/.runtime
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

demo: $(VENV)/.runtime
	$(PY) -m pgm_jax.main --config=configs/demo.py --workdir=$(DEMO_DIR)
	$(PY) -m pgm_jax.sample --workdir=$(DEMO_DIR) --num_samples=3 --batch_size=3

demo-mdlm: $(VENV)/.runtime
	$(PY) -m pgm_jax.main --config=configs/demo.py:mdlm --workdir=$(DEMO_DIR)-mdlm
	$(PY) -m pgm_jax.sample --workdir=$(DEMO_DIR)-mdlm --num_samples=3 --batch_size=3

# Trains the demo run and the AR judge first when they are missing (~10 minutes each).
demo-distill: $(VENV)/.runtime
	test -d $(DEMO_DIR)/checkpoints || $(PY) -m pgm_jax.main --config=configs/demo.py --workdir=$(DEMO_DIR)
	test -d $(AR_DIR)/checkpoints || $(PY) -m pgm_jax.main --config=configs/demo.py:ar --workdir=$(AR_DIR)
	$(PY) -m pgm_jax.main --config=configs/distill.py:demo --config.distill.teacher=$(DEMO_DIR) --workdir=$(DISTILL_DIR)
	$(PY) -m pgm_jax.compare_steps --runs=teacher=$(DEMO_DIR),student=$(DISTILL_DIR) --judge=$(AR_DIR) --steps=8,16,32 --output=$(DISTILL_DIR)/steps_table.jsonl

# Trains the missing demo runs first (~10 minutes each).
demo-downstream: $(VENV)/.runtime
	test -d $(DEMO_DIR)/checkpoints || $(PY) -m pgm_jax.main --config=configs/demo.py --workdir=$(DEMO_DIR)
	test -d $(DEMO_DIR)-mdlm/checkpoints || $(PY) -m pgm_jax.main --config=configs/demo.py:mdlm --workdir=$(DEMO_DIR)-mdlm
	test -d $(AR_DIR)/checkpoints || $(PY) -m pgm_jax.main --config=configs/demo.py:ar --workdir=$(AR_DIR)
	$(PY) -m benchmarks.downstream --runs=pgm=$(DEMO_DIR),mdlm=$(DEMO_DIR)-mdlm,ar=$(AR_DIR) --output=$(DEMO_DIR)-downstream --time_mc=1024

demo-images: $(VENV)/.runtime
	$(PY) -m pgm_jax.main --config=configs/digits.py --workdir=$(DIGITS_DIR)
	$(PY) -m pgm_jax.sample --workdir=$(DIGITS_DIR) --num_samples=10 --batch_size=50

compare: $(VENV)/.dev
	$(PY) -m benchmarks.compare --output=$(COMPARE_DIR)

test: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q --durations=10

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

clean-demo:
	rm -rf $(DEMO_DIR) $(DEMO_DIR)-mdlm $(DEMO_DIR)-downstream $(DISTILL_DIR) $(AR_DIR) $(DIGITS_DIR)
