# Every target sets itself up on a fresh machine: `make demo` and `make test` need nothing installed by hand.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SHARED ?= ../shared/data

.PHONY: venv demo test test-fast bench lite-model browser clean

venv: $(STAMP)

# torch is installed first and pinned to the CPU build this machine has on disk; a bare `torch`
# requirement would otherwise pull a multi-GB CUDA build. constraints.txt pins what was tested.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test,serve-test]'
	touch $(STAMP)

demo: venv
	$(BIN)/thinkrm analyze examples/traces.jsonl -o out/demo

test: venv
	$(BIN)/python -m pytest -q

test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow"

bench: venv
	$(BIN)/python benchmarks/run_all.py --shared $(SHARED)

# Weights, split.json and MODEL_CARD.md from the shared data (seed 0), then the speed section of the card.
lite-model: venv
	$(BIN)/thinkrm train --arch lite --shared $(SHARED) -o src/thinkrm/data/lite --seed 0
	$(BIN)/python benchmarks/bench_lite.py --shared $(SHARED) --skip-quality --write-card

# Debian's Chromium for the HTML report test (the test skips without it; CI installs it).
browser:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

clean:
	rm -rf $(VENV) out build *.egg-info
