# `make run` and `make test` do all set-up themselves on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test setup doctor bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/lora-mlx

test: $(STAMP)
	$(BIN)/python -m pytest -q

doctor: $(STAMP)
	$(BIN)/lora-mlx doctor

bench: $(STAMP)
	$(BIN)/python benchmarks/blas.py
	$(BIN)/python benchmarks/vs_mlx_lm.py

clean:
	rm -rf $(VENV) runs .pytest_cache
