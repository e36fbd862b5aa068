"""Gated rewards and the TRL / verl / OpenRLHF adapters, each called exactly as its framework calls it."""

from __future__ import annotations

import asyncio
import importlib.util
import math
import pickle
import statistics
import sys
from pathlib import Path

import pytest

from thinkrm.calibration import Calibration
from thinkrm.rewards import (
    AsyncThinkingReward,
    ThinkingReward,
    completion_text,
    gated,
    gated_batch,
    normalize_scores,
    problem_from_chat,
    prompt_text,
    recover_response,
    reorder_stats,
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
    reward = ThinkingReward("length", alpha=0.2, normalize="none")
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


def test_gated_normalize_modes():
    cal = Calibration(center=20.0, scale=4.0)
    assert gated(1, 20.0, normalize="calibrated", calibration=cal) == pytest.approx(0.9)
    assert gated(1, 24.0, normalize="calibrated", calibration=cal) == pytest.approx(0.8 + 0.2 * sigmoid(1.0))
    # Raw scores far above 0 saturate the sigmoid: the reason calibration exists.
    assert gated(1, 20.0) == pytest.approx(1.0, abs=1e-8) and gated(1, 24.0) == pytest.approx(1.0, abs=1e-8)
    with pytest.raises(ValueError, match="calibration"):
        gated(1, 20.0, normalize="calibrated")
    with pytest.raises(ValueError, match="gated_batch"):
        gated(1, 20.0, normalize="group")
    with pytest.raises(ValueError, match="normalize must be one of"):
        gated(1, 20.0, normalize="zscore")


def test_group_normalization_standardises_correct_answers_per_group():
    r_v = [1.0, 1.0, 0.0, 1.0, 1.0, 1.0, None]
    r_t = [30.0, 10.0, 99.0, 5.0, 7.0, 7.0, None]
    groups = ["a", "a", "a", "b", "c", "c", "c"]
    z = normalize_scores(r_t, "group", r_v=r_v, groups=groups)
    assert z[0] == pytest.approx(1.0) and z[1] == pytest.approx(-1.0)  # two items: +-1 population sd
    assert z[2] is None  # wrong answers take no part in their group's statistics
    assert z[3] == 0.0  # alone in its group: nothing to compare with
    assert z[4] == z[5] == 0.0  # equal scores: no preference, not a division by zero
    rewards, _ = gated_batch(r_v, r_t, 0.2, normalize="group", groups=groups)
    assert rewards[0] == pytest.approx(0.8 + 0.2 * sigmoid(1.0)) and rewards[2] == 0.0 and rewards[6] is None
    # The same group shifted by any constant gets the same rewards: group mode is scale- and offset-free.
    shifted, _ = gated_batch(r_v, [None if t is None else 3 * t - 500 for t in r_t], 0.2, normalize="group",
                             groups=groups)
    assert shifted[:2] == pytest.approx(rewards[:2])


def test_reorder_stats_count_groups_whose_correct_answers_the_thinking_term_orders():
    r_v = [1.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    groups = ["a", "a", "a", "b", "b", "c"]
    stats = reorder_stats([0.95, 0.85, 0.0, 1.0, 1.0 - 1e-7, 0.9], r_v, groups)
    assert stats["groups"] == 2 and stats["reordered"] == 0.5  # "b" differs by float noise only
    assert stats["spread"] == pytest.approx((0.1 + 1e-7) / 2)


def test_auto_uses_the_scorers_calibration_else_group_and_calibrated_requires_one():
    from thinkrm.scoring import load_scorer

    prompts, responses, golds = ["3 + 4?"] * 2, [RIGHT, RIGHT_LONG], ["7", "7"]
    calibrated = ThinkingReward(load_scorer("length", calibration="-40,10"), normalize="auto")
    batch = calibrated.compute(prompts, responses, golds)
    assert batch.normalize == "calibrated"
    assert batch.z[0] == pytest.approx((-len("3 + 4 = 7") + 40) / 10)
    grouped = ThinkingReward("length").compute(prompts, responses, golds)
    assert grouped.normalize == "group" and grouped.z == [pytest.approx(1.0), pytest.approx(-1.0)]
    with pytest.raises(ValueError, match="has no calibration"):
        ThinkingReward("length", normalize="calibrated").compute(prompts, responses, golds)
    given = ThinkingReward("length", normalize="calibrated", calibration=(-40, 10))
    assert given.compute(prompts, responses, golds).z == batch.z


def test_reward_pickles_after_use_and_still_scores():
    reward = thinking_reward("length", normalize="none")
    kwargs = dict(prompts=["q", "q"], completions=[RIGHT, WRONG], answer=["7", "7"])
    before = reward(**kwargs)
    clone = pickle.loads(pickle.dumps(reward))
    assert clone(**kwargs) == before and clone.alpha == reward.alpha
    async_clone = pickle.loads(pickle.dumps(thinking_reward("length", normalize="none", asynchronous=True)))
    assert asyncio.run(async_clone(**kwargs)) == before


def test_problem_from_chat_and_recover_response():
    chatml = ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 3 + 4?<|im_end|>\n"
              "<|im_start|>assistant\n")
    llama3 = ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is 3 + 4?<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert problem_from_chat(chatml) == problem_from_chat(llama3) == "What is 3 + 4?"
    assert problem_from_chat("<|user|>What is 3 + 4?<|assistant|>") == "What is 3 + 4?"
    assert problem_from_chat("Q: plain prompt") == "Q: plain prompt"
    assert recover_response(chatml + RIGHT, chatml) == RIGHT
    assert recover_response("<s>" + chatml + RIGHT, chatml) == RIGHT  # a BOS the round trip added
    with pytest.raises(ValueError, match="does not contain its prompt"):
        recover_response("something else entirely", chatml)


@pytest.mark.slow
def test_lite_ships_a_calibration_that_makes_the_gated_reward_move():
    """The default scorer's raw scores saturate the sigmoid; its shipped calibration spreads the rewards
    of correct traces over the alpha span."""
    from thinkrm.scoring import load_scorer
    from thinkrm.trace import load_traces

    scorer = load_scorer("lite")
    assert scorer.calibration is not None and scorer.calibration.n > 100
    traces = list(load_traces(ROOT / "examples" / "traces.jsonl"))
    raw = scorer.score([(t.prompt, t.reasoning) for t in traces])
    plain = [gated(1, s) for s in raw]
    calibrated = [gated(1, s, normalize="calibrated", calibration=scorer.calibration) for s in raw]
    iqr = lambda xs: statistics.quantiles(xs, n=4)[2] - statistics.quantiles(xs, n=4)[0]  # noqa: E731
    assert iqr(plain) < 0.02 and iqr(calibrated) > 0.05
    reward = pickle.loads(pickle.dumps(thinking_reward("lite")))
    assert reward.compute(["What is 3 + 4?"], [RIGHT], ["7"]).normalize == "calibrated"


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
