# arborseg: two commands on a fresh machine.
#   make quickstart   set up, then run the quickstart campaign on an embedded synthetic EM volume
#   make test         set up, then run the test suite
PYTHON ?= python3
PIP := $(PYTHON) -m pip
TORCH_CPU := torch==2.13.0

.PHONY: setup quickstart test ci-services bench clean

setup:
	@# Where no NVIDIA GPU is present, take the CPU build of torch first (the project itself accepts a range).
	@if ! $(PYTHON) -c "import torch" 2>/dev/null; then \
	  if command -v nvidia-smi >/dev/null 2>&1; then $(PIP) install -q "torch>=2.1,<3"; \
	  else $(PIP) install -q $(TORCH_CPU) || $(PIP) install -q --index-url https://download.pytorch.org/whl/cpu "torch>=2.1,<3"; fi; \
	fi
	$(PIP) install -q -e ".[test]"

quickstart: setup
	arborseg search examples/quickstart.yaml

test: setup
	$(PYTHON) -m pytest -q

ci-services:
	bash .ci/slurm_up.sh

bench: setup
	$(PYTHON) benchmarks/run_all.py

clean:
	rm -rf runs/quickstart trees .pytest_cache
