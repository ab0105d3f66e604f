# arborseg: two commands on a fresh machine.
#   make quickstart   set up, then run the quickstart campaign on an embedded synthetic EM volume
#   make test         set up, lint, then run the test suite
PYTHON ?= python3
PIP := $(PYTHON) -m pip
TORCH_CPU := torch==2.13.0

.PHONY: setup quickstart lint test ci-services bench clean

setup:
	@# Where no NVIDIA GPU is present, take the CPU build of torch first (the project itself accepts a range).
	@if ! $(PYTHON) -c "import torch" 2>/dev/null; then \
	  if command -v nvidia-smi >/dev/null 2>&1; then $(PIP) install -q "torch>=2.1,<3"; \
	  else $(PIP) install -q $(TORCH_CPU) || $(PIP) install -q --index-url https://download.pytorch.org/whl/cpu "torch>=2.1,<3"; fi; \
	fi
	$(PIP) install -q -e ".[test]"

quickstart: setup
	arborseg search examples/quickstart.yaml
	arborseg ensemble runs/quickstart

# ruff (ruff.toml) on the code, tests and benchmarks; mypy (mypy.ini) on the package
lint: setup
	$(PYTHON) -m ruff check src tests benchmarks
	$(PYTHON) -m mypy

test: lint
	$(PYTHON) -m pytest -q

ci-services:
	bash .ci/slurm_up.sh

# every benchmark at its CPU size (several hours on 2 cores); each writes its section of benchmarks/README.md
bench: setup
	$(PIP) install -q -e ".[bench]"
	$(PYTHON) benchmarks/bench_thin3d_builder.py --rounds 10 --steps 5
	$(PYTHON) benchmarks/bench_vnc_mito_thin3d.py --steps 300 --threads 1
	$(PYTHON) benchmarks/bench_orchestration.py --rounds 2 --trials 3 --tiny-steps 4 --qs-trees 4 --qs-steps 20
	$(PYTHON) benchmarks/bench_pruning.py --seeds 0 1
	$(PYTHON) benchmarks/bench_tiled_prediction.py --shape 16 512 512 --repeats 3 --trees 2 1
	$(PYTHON) benchmarks/bench_large_volume.py --shape 64 2048 2048 --caps 400 250
	$(PYTHON) benchmarks/bench_ensemble_predict.py --shape 12 256 256 --trees 1 3 2 --repeats 5
	$(PYTHON) benchmarks/bench_active_learning.py
	$(PYTHON) benchmarks/bench_search_vs_baselines.py --budget cpu_sh

clean:
	rm -rf runs/quickstart trees .pytest_cache
