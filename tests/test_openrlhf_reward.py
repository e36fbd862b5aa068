"""The OpenRLHF reward file loaded and called by OpenRLHF 0.11's own executor (`openrlhf.utils.agent`)."""

from __future__ import annotations

import asyncio

import pytest
import torch
from frameworks import framework_module

import thinkrm.openrlhf_reward
from thinkrm.rewards import gated

CHAT = "<|im_start|>user\nWhat is 3 + 4?<|im_end|>\n<|im_start|>assistant\n"
RIGHT = "<think>3 + 4 = 7</think> The answer is \\boxed{7}.<|im_end|>"
RIGHT_LONG = "<think>3 + 4: count 4, 5, 6, then 7. Wait: 3 + 4 = 7.</think> The answer: \\boxed{7}.<|im_end|>"
WRONG = "<think>3 + 4 = 8</think> The answer is \\boxed{8}.<|im_end|>"


@pytest.fixture
def executor(monkeypatch):
    monkeypatch.setenv("THINKRM_SCORER", "length")
    monkeypatch.setenv("THINKRM_CALIBRATION", "-40,10")
    with framework_module("openrlhf", "openrlhf.utils.agent") as agent:
        # The constructor imports the file as a module named `reward_func`, with no package around it.
        yield agent.SingleTurnAgentExecutor(remote_rm_url=thinkrm.openrlhf_reward.__file__)


def _fetch(executor, query: str, label: str) -> dict:
    """The executor's own call: one sample per call, run in a thread (`_fetch_rewards_via_func`)."""
    return asyncio.run(executor._fetch_rewards_via_func([query], [CHAT], [label]))[0]


def test_openrlhf_loads_the_file_and_calls_reward_func(executor):
    right, long, wrong = (_fetch(executor, CHAT + r, "7") for r in (RIGHT, RIGHT_LONG, WRONG))
    for out in (right, long, wrong):
        assert set(out) == {"rewards", "scores", "extra_logs"}
        assert isinstance(out["rewards"], torch.Tensor) and out["rewards"].shape == (1,)
        assert set(out["extra_logs"]) == {"r_v", "r_t", "r_t_normalized"}
    r_t = -len("3 + 4 = 7")
    assert right["scores"].item() == 1.0 and wrong["scores"].item() == 0.0
    assert right["rewards"].item() == pytest.approx(gated(1, (r_t + 40) / 10), rel=1e-6)
    assert wrong["rewards"].item() == 0.0
    assert right["rewards"].item() - long["rewards"].item() > 0.01  # the thinking term moves the reward


def test_a_query_without_its_prompt_is_an_error_not_a_guess(executor):
    with pytest.raises(ValueError, match="does not contain its prompt"):
        _fetch(executor, "<|im_start|>user\nsomething else<|im_end|>" + RIGHT, "7")


@pytest.mark.parametrize("env, problem", [({"THINKRM_CALIBRATION": ""}, "has no calibration"),
                                          ({"THINKRM_NORMALIZE": "group"}, "one sample at a time"),
                                          ({"THINKRM_SCORER": "nope"}, "unknown scorer spec")])
def test_a_bad_option_fails_when_openrlhf_loads_the_file_not_per_sample(monkeypatch, env, problem):
    """OpenRLHF swallows reward_func's exceptions (logged at INFO), so options are checked at load time."""
    monkeypatch.setenv("THINKRM_SCORER", "length")
    monkeypatch.setenv("THINKRM_CALIBRATION", "-40,10")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with framework_module("openrlhf", "openrlhf.utils.agent") as agent:
        with pytest.raises(ValueError, match=problem):
            agent.SingleTurnAgentExecutor(remote_rm_url=thinkrm.openrlhf_reward.__file__)


def test_batch_size_mismatch(monkeypatch):
    monkeypatch.setenv("THINKRM_SCORER", "length")
    with pytest.raises(ValueError, match="batch sizes differ"):
        thinkrm.openrlhf_reward.reward_func(["a", "b"], ["a"], ["7", "7"])


@pytest.mark.slow
def test_concurrent_calls_with_the_default_scorer_agree_with_sequential_ones(monkeypatch):
    """OpenRLHF runs one reward_func call per sample in worker threads, all at once."""
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setenv("THINKRM_SCORER", "lite")
    monkeypatch.delenv("THINKRM_CALIBRATION", raising=False)
    queries = [CHAT + r for r in (RIGHT, RIGHT_LONG, WRONG)] * 4
    sequential = [thinkrm.openrlhf_reward.reward_func([q], [CHAT], ["7"])["rewards"].item() for q in queries]
    with ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(
            lambda q: thinkrm.openrlhf_reward.reward_func([q], [CHAT], ["7"])["rewards"].item(), queries))
    assert parallel == pytest.approx(sequential, abs=1e-6)
    assert 0.8 < sequential[0] < 1.0 and sequential[2] == 0.0
