# Two entry points: `make demo` (set up + run meshplan on a built-in scenario) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/meshplan plan --model Llama-3.1-70B --gpu H100 --num-gpus 64 --global-batch 512 --seq-len 8192 \
		--memory-headroom 0.1 --top-k 8

test: $(VENV)/.installed
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache
