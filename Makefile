# Two entry points: `make demo` and `make test`. Both create .venv on first use and reuse it.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.xoresnet-installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "xoresnet needs Python >= 3.11 (found " + sys.version.split()[0] + ")")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	# lava-nc 0.10.0 declares Python < 3.11; its real dependencies come with the line above.
	$(BIN)/python -m pip install -q --no-deps --ignore-requires-python lava-nc==0.10.0
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/xoresnet-export models/xoresnet-digits-qat.pt --target loihi2 --out out/demo

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
