# Entry points: `make demo`, `make demo-nir` and `make test`. Each creates .venv on first use and reuses it.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.xoresnet-installed

.PHONY: setup demo demo-nir test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "xoresnet needs Python >= 3.11 (found " + sys.version.split()[0] + ")")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	# lava-nc 0.10.0 declares Python < 3.11; its real dependencies come with the line above.
	$(BIN)/python -m pip install -q --no-deps --ignore-requires-python lava-nc==0.10.0
	# norse 1.1.0 (a NIR producer the tests export with) declares torchvision, which it imports only in
	# norse/task and norse/dataset and which is unusable beside torch 2.13 CPU; its real dependencies
	# (numpy, torch, nir, nirtorch) come with the dev extra above.
	$(BIN)/python -m pip install -q --no-deps norse==1.1.0
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/xoresnet-export models/xoresnet-digits-qat.pt --target loihi2 --out out/demo

# The foreign demo: a snnTorch network trained on digits (scripts/train_snntorch_digits.py), deployed from its NIR file.
demo-nir: $(STAMP)
	$(BIN)/xoresnet-export models/snntorch-digits.nir --target loihi2 --dataset digits --dt 1e-4 --timesteps 8 \
		--readout spike-count --out out/demo-nir

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/train_step.py
	$(BIN)/python bench/reference_vs_lava.py
	$(BIN)/python bench/parity_time.py --cache out/bench-graphs
	$(BIN)/python bench/export_time.py
	$(BIN)/python bench/packing.py

clean:
	rm -rf $(VENV) out
