"""Gated rewards and the TRL / verl / OpenRLHF adapters, each called exactly as its framework calls it."""

from __future__ import annotations

import asyncio
import importlib.util
import math
import sys
from pathlib import Path

import pytest

from thinkrm.rewards import (
    AsyncThinkingReward,
    ThinkingReward,
    completion_text,
    gated,
    prompt_text,
    sigmoid,
    thinking_reward,
)

ROOT = Path(__file__).resolve().parents[1]
RIGHT = "<think>3 + 4 = 7</think> The answer is 7."
RIGHT_LONG = "<think>3 + 4: count 4, 5, 6, then 7. Wait, check again: 3 + 4 = 7.</think> The answer is 7."
WRONG = "<think>3 + 4 = 8</think> The answer is 8."


def test_sigmoid_is_stable_and_symmetric():
    assert sigmoid(0) == 0.5
    assert sigmoid(1000) == 1.0 and sigmoid(-1000) == 0.0  # no OverflowError either way
    for x in (-30.0, -2.5, 0.3, 12.0):
        assert math.isclose(sigmoid(x) + sigmoid(-x), 1.0)


def test_gated_formula_and_bounds():
    assert gated(1, 0.0) == pytest.approx(0.9)  # 1 - 0.2 + 0.2 * 0.5
    assert gated(1, 3.0, alpha=0.5) == pytest.approx(0.5 + 0.5 * sigmoid(3.0))
    assert gated(0, 50.0) == 0.0 and gated(0, float("nan")) == 0.0  # wrong answers get nothing
    assert 0.8 <= gated(1, -1e9) < gated(1, 0.0) < gated(1, 1e9) <= 1.0
    assert gated(1, 2.0, alpha=0.0) == 1.0
    with pytest.raises(ValueError, match="alpha"):
        gated(1, 0.0, alpha=1.5)
    with pytest.raises(ValueError, match="NaN"):
        gated(1, float("nan"))


def test_compute_verifies_then_scores_only_correct_answers():
    reward = ThinkingReward("length", alpha=0.2)
    batch = reward.compute(["3 + 4?"] * 4, [RIGHT, RIGHT_LONG, WRONG, RIGHT], ["7", "7", "7", None])
    assert batch.r_v == [1.0, 1.0, 0.0, None]
    assert batch.r_t[2] is None and batch.r_t[3] is None  # wrong: not worth scoring; no gold: no reward
    assert batch.r_t[0] == -len("3 + 4 = 7")  # the length scorer reads the reasoning only
    assert batch.rewards[0] == pytest.approx(gated(1, batch.r_t[0]))
    assert batch.rewards[0] > batch.rewards[1] > batch.rewards[2] == 0.0  # shorter reasoning wins here
    assert batch.rewards[3] is None


def test_message_helpers():
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 3 + 4?"}]
    assert prompt_text(conv) == "What is 3 + 4?"
    assert prompt_text("plain") == "plain"
    assert completion_text([{"role": "assistant", "content": [{"type": "text", "text": RIGHT}]}]) == RIGHT


class TRLHooks:
    """What GRPOTrainer._calculate_rewards passes: trainer_state, log_extra and log_metric."""

    def __init__(self):
        from transformers import TrainerState

        self.extra: dict[str, list] = {}
        self.metrics: dict[str, list] = {}
        self.state = TrainerState()

    def kwargs(self):
        return {"trainer_state": self.state,
                "log_extra": lambda column, values: self.extra.setdefault(column, []).extend(values),
                "log_metric": lambda name, value: self.metrics.setdefault(name, []).append(value)}


@pytest.mark.parametrize("conversational", [False, True])
def test_trl_sync_call_standard_and_conversational(conversational):
    hooks = TRLHooks()
    prompts = ["What is 3 + 4?"] * 3
    completions = [RIGHT, WRONG, RIGHT_LONG]
    if conversational:
        prompts = [[{"role": "user", "content": p}] for p in prompts]
        completions = [[{"role": "assistant", "content": c}] for c in completions]
    reward = thinking_reward("length")
    # Exactly GRPOTrainer's call: keyword arguments, dataset columns repeated per completion.
    out = reward(prompts=prompts, completions=completions, completion_ids=[[1, 2]] * 3,
                 answer=["7", "7", "7"], **hooks.kwargs())
    assert len(out) == 3 and out[1] == 0.0 and out[0] > out[2] >= 0.8
    assert hooks.extra["r_v"] == [1.0, 0.0, 1.0]
    assert hooks.extra["r_t"][1] is None and hooks.extra["r_t"][0] == -len("3 + 4 = 7")
    assert hooks.metrics["thinking_reward/r_v"] == [pytest.approx(2 / 3)]


def test_trl_gold_column_choice_and_missing_column():
    reward = thinking_reward("length", gold_columns=("solution",))
    assert reward(prompts=["q"], completions=[RIGHT], solution=["7"])[0] > 0.8
    with pytest.raises(ValueError, match="no gold answer column.*solution"):
        reward(prompts=["q"], completions=[RIGHT], answer=["7"])


def test_trl_async_variant_is_detected_and_awaited_like_trl_does():
    from trl.trainer.utils import is_async_callable

    sync, async_ = thinking_reward("length"), thinking_reward("length", asynchronous=True)
    assert isinstance(async_, AsyncThinkingReward)
    assert is_async_callable(async_) and not is_async_callable(sync)
    kwargs = dict(prompts=["q", "q"], completions=[RIGHT, WRONG], completion_ids=[[1], [2]],
                  answer=["7", "7"])

    async def on_trl_loop():
        return await async_(**kwargs, **TRLHooks().kwargs())

    assert asyncio.run(on_trl_loop()) == sync(**kwargs)


def test_verl_compute_score_as_naive_reward_manager_calls_it():
    from thinkrm.verl_reward import compute_score

    out = compute_score(data_source="openai/gsm8k", solution_str=RIGHT, ground_truth="7",
                        extra_info={"split": "train", "index": 0, "question": "What is 3 + 4?"},
                        scorer="length")
    assert set(out) == {"score", "r_v", "r_t"}
    assert out["r_v"] == 1.0 and out["r_t"] == -len("3 + 4 = 7") and out["score"] == gated(1, out["r_t"])
    wrong = compute_score("openai/gsm8k", WRONG, "7", None, scorer="length")
    assert wrong["score"] == 0.0 and wrong["r_v"] == 0.0 and isinstance(wrong["r_t"], float)


@pytest.mark.parametrize("engine", ["sglang", "vllm"])
def test_verl_reward_loop_call_scores_through_the_router(engine):
    """verl's reward loop adds reward_router_address (host:port, no scheme) and reward_model_tokenizer;
    the thinking score must then come from the server behind it, here a real `thinkrm serve`."""
    from thinkrm.scoring import load_scorer
    from thinkrm.serve import ServeConfig, running
    from thinkrm.verl_reward import compute_score, compute_score_async

    scorer = load_scorer("length")
    with running(scorer, ServeConfig(port=0)) as url:
        address = url.split("://", 1)[1]
        kwargs = dict(data_source="math", solution_str=RIGHT_LONG, ground_truth="7",
                      extra_info={"question": "What is 3 + 4?"}, reward_router_address=address,
                      reward_model_tokenizer=None, reward_model_path="trm", router_engine=engine)
        out = compute_score(**kwargs)
        assert asyncio.run(compute_score_async(**kwargs)) == out
    expected = scorer.score([("What is 3 + 4?", RIGHT_LONG.split("</think>")[0].removeprefix("<think>"))])[0]
    assert out["r_v"] == 1.0 and out["r_t"] == pytest.approx(expected)
    assert out["score"] == pytest.approx(gated(1, expected))


def test_openrlhf_reward_func_as_openrlhf_loads_and_calls_it(monkeypatch):
    """OpenRLHF imports the file by path and calls reward_func(queries, prompts, labels)."""
    import torch

    import thinkrm.openrlhf_reward as module

    monkeypatch.setenv("THINKRM_SCORER", "length")
    spec = importlib.util.spec_from_file_location("reward_func", module.__file__)
    loaded = importlib.util.module_from_spec(spec)
    loaded.__package__ = "thinkrm"  # the file uses relative imports of its own package
    spec.loader.exec_module(loaded)
    prompts = ["<|user|>What is 3 + 4?<|assistant|>"] * 2
    out = loaded.reward_func([p + r for p, r in zip(prompts, [RIGHT, WRONG])], prompts, ["7", "7"])
    assert set(out) == {"rewards", "scores", "extra_logs"}
    assert isinstance(out["rewards"], torch.Tensor) and out["rewards"].shape == (2,)
    assert out["scores"].tolist() == [1.0, 0.0]
    assert out["rewards"][0].item() == pytest.approx(gated(1, -len("3 + 4 = 7")), rel=1e-6)
    assert out["rewards"][1].item() == 0.0
    assert set(out["extra_logs"]) == {"r_v", "r_t"}


def _example():
    spec = importlib.util.spec_from_file_location("grpo_trl_example", ROOT / "examples" / "grpo_trl.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_real_grpo_trainer_steps_with_the_gated_reward(tmp_path):
    """A real TRL GRPOTrainer on CPU: the reward is called by TRL, and r_v / r_t reach its logs."""
    import torch

    example = _example()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the example does: threads only slow a tiny model down on a shared CPU
    try:
        policy = example.build_tiny_policy(tmp_path / "policy", warmup_steps=40)
        trainer = example.train(policy, tmp_path / "grpo", scorer="length", steps=2, num_generations=4,
                                prompts=8)
    finally:
        torch.set_num_threads(threads)
    logged = [row for row in trainer.state.log_history if "reward" in row]
    assert len(logged) == 2
    for row in logged:
        assert 0.0 <= row["thinking_reward/r_v"] <= 1.0
        assert row["thinking_reward/r_t"] < 0  # the length scorer: minus the reasoning's characters
        # The mean reward is the mean of gated rewards: at most r_v (alpha shaves off up to 20%).
        assert row["reward"] <= row["thinking_reward/r_v"] + 1e-6
        assert row["reward"] >= 0.8 * row["thinking_reward/r_v"] - 1e-6
