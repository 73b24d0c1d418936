# Set-up and the two commands the README names: `make sweep` (main job) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0
GRID ?= grids/tiny.yaml

.PHONY: install sweep test test-fast clean-sweep bench

$(BIN)/loopscale: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU wheel first: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH_PIN)
	# trackers: `make test` runs the tracker tests for real (tensorboard, mlflow-skinny, wandb offline)
	$(BIN)/pip install -q -e '.[dev,trackers]'
	touch $(BIN)/loopscale

install: $(BIN)/loopscale

# Main job: the embedded default sweep on this machine, then its fit and its HTML report.
# grids/tiny.yaml trains on the default corpus as bytes (data/bytes, built in seconds).
sweep: install
	$(BIN)/loopscale data prepare --tokenizer bytes --out data/bytes
	$(BIN)/loopscale sweep $(GRID) --wait
	$(BIN)/loopscale fit sweeps/$(basename $(notdir $(GRID)))
	$(BIN)/loopscale report sweeps/$(basename $(notdir $(GRID)))

# The full suite, as CI runs it (the SLURM tests skip without a cluster: scripts/slurm-local.sh starts one).
test: install
	$(BIN)/python -m pytest -q

# Everything but the tests marked slow (those that train, sweep or build a wheel), over every core (pytest-xdist):
# 63 s on an idle 2-core machine.
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" -n auto

# Every bench script; the GPU check (bench/gpu_check.sh) only means something on a GPU machine: run it there.
bench: install
	for b in bench/*.py; do [ $$b = bench/gpu_check.py ] && continue; echo "== $$b"; $(BIN)/python $$b || exit 1; done
