# Every target sets itself up on a fresh machine: `make demo` and `make test` need nothing installed by hand.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SHARED ?= ../shared/data
RL_FRAMEWORKS := verl==0.9.1 openrlhf==0.11.2
# The lowest supported transformers / TRL (constraints-low.txt), for the reward-model and RL-adapter tests.
LOW_VENV := .venv-low
LOW_BIN := $(LOW_VENV)/bin
LOW_STAMP := $(LOW_VENV)/.installed
LOW_TESTS := tests/test_train.py tests/test_hf_scorer.py tests/test_tiny_models.py tests/test_rewards.py \
	tests/test_verl_reward.py tests/test_openrlhf_reward.py
# The slow ones that touch version-dependent code: multi-process training, LoRA merge (peft), resume from a
# Trainer checkpoint, TRL's real GRPO loop calling the reward (about 35 s of the ~90 s test-low spends), bad
# pairs and margins through TRL's loss, and the hf: scorer against a plain forward pass (tokenizer padding
# side, pad/EOS handling); these last six add about 15 s.
LOW_SLOW := tests/test_train.py::test_two_process_launch_trains_once_and_saves_once \
	tests/test_train.py::test_lora_run_is_merged_into_a_plain_checkpoint \
	tests/test_train.py::test_resume_continues_from_the_last_checkpoint \
	tests/test_train.py::test_bad_pairs_are_counted_and_skipped \
	tests/test_train.py::test_margins_enter_the_loss_unless_disabled \
	tests/test_rewards.py::test_real_grpo_trainer_steps_with_the_gated_reward \
	tests/test_hf_scorer.py::test_scores_equal_plain_forward_and_keep_input_order \
	tests/test_hf_scorer.py::test_tokenizer_padding_side_does_not_matter \
	tests/test_hf_scorer.py::test_checkpoint_without_pad_token_reads_true_last_token \
	tests/test_hf_scorer.py::test_pad_equal_to_eos_is_not_trusted

.PHONY: venv demo test lint test-fast test-low bench lite-model browser clean

venv: $(STAMP)

# torch is installed first and pinned to the CPU build this machine has on disk; a bare `torch`
# requirement would otherwise pull a multi-GB CUDA build. constraints.txt pins what was tested.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test,serve-test]'
	# The RL frameworks whose own loaders the adapter tests call (verl's load_extern_object, OpenRLHF's
	# reward-file import) and whose config schemas the docs are checked against; without their GPU stacks.
	$(BIN)/python -m pip install -q --no-deps $(RL_FRAMEWORKS)
	touch $(STAMP)

# The same on the low pins: constraints.txt with each package constraints-low.txt names swapped for its pin.
$(LOW_STAMP): pyproject.toml constraints.txt constraints-low.txt
	test -x $(LOW_BIN)/python || $(PY) -m venv $(LOW_VENV)
	$(LOW_BIN)/python -m pip install -q --upgrade pip
	$(LOW_BIN)/python -m pip install -q torch==2.13.0
	sed -n 's/^\([A-Za-z0-9_.-]*\)==.*/^\1==/p' constraints-low.txt > $(LOW_VENV)/low-names
	grep -v -i -f $(LOW_VENV)/low-names constraints.txt | cat - constraints-low.txt > $(LOW_VENV)/constraints.txt
	$(LOW_BIN)/python -m pip install -q -c $(LOW_VENV)/constraints.txt -e '.[test]'
	$(LOW_BIN)/python -m pip install -q --no-deps $(RL_FRAMEWORKS)
	touch $(LOW_STAMP)

demo: venv
	$(BIN)/thinkrm analyze examples/traces.jsonl -o out/demo

# Lint first: it takes a second, and the rules are pyproject.toml's, not ruff's defaults of the day.
test: venv lint
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check src tests benchmarks

test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow"

test-low: $(LOW_STAMP)
	$(LOW_BIN)/python -m pytest -q -m "not slow" $(LOW_TESTS)
	$(LOW_BIN)/python -m pytest -q $(LOW_SLOW)

bench: venv
	$(BIN)/python benchmarks/run_all.py --shared $(SHARED)

# Weights, split.json and MODEL_CARD.md from the shared data (seed 0), then the speed section of the card.
lite-model: venv
	$(BIN)/thinkrm train-lite --shared $(SHARED) -o src/thinkrm/data/lite --seed 0
	$(BIN)/python benchmarks/bench_lite.py --shared $(SHARED) --skip-quality --write-card

# Debian's Chromium for the HTML report test (the test skips without it; CI installs it).
browser:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

clean:
	rm -rf $(VENV) $(LOW_VENV) out build *.egg-info
