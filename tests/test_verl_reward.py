"""The verl adapter loaded by verl 0.9's own `load_extern_object` and called as its reward loop calls it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from frameworks import framework_module

import thinkrm.verl_reward
from thinkrm.calibration import Calibration
from thinkrm.rewards import gated

RIGHT = "<think>3 + 4 = 7</think> The answer is 7."
RIGHT_LONG = "<think>3 + 4: count 4, 5, 6, then 7. Wait, check again: 3 + 4 = 7.</think> The answer is 7."
WRONG = "<think>3 + 4 = 8</think> The answer is 8."
CAL = "-40,10"  # the length scorer's raw scores are minus the reasoning's characters


@pytest.fixture
def load_extern_object():
    with framework_module("verl", "verl.utils.import_utils") as module:
        yield module.load_extern_object


@pytest.mark.parametrize("path", [thinkrm.verl_reward.__file__, "pkg://thinkrm.verl_reward",
                                  "file://" + thinkrm.verl_reward.__file__])
def test_verl_loads_the_adapter_by_file_and_by_package(load_extern_object, path):
    """verl's file mode executes the file as a standalone module (no package), which fails on any relative
    import; `pkg://` imports it by name."""
    compute_score = load_extern_object(module_path=path, object_name="compute_score")
    # The naive reward manager's call, with reward_kwargs merged in as verl's _call_with_kwargs does.
    out = compute_score(data_source="openai/gsm8k", solution_str=RIGHT, ground_truth="7",
                        extra_info={"split": "train", "index": 0, "question": "What is 3 + 4?",
                                    "num_turns": 2, "rollout_reward_scores": {}},
                        scorer="length", calibration=CAL)
    r_t = -len("3 + 4 = 7")
    assert out == {"score": pytest.approx(gated(1, (r_t + 40) / 10)), "r_v": 1.0, "r_t": r_t,
                   "r_t_normalized": pytest.approx((r_t + 40) / 10)}
    wrong = compute_score("openai/gsm8k", WRONG, "7", None, scorer="length", calibration=CAL)
    assert wrong["score"] == 0.0 and wrong["r_v"] == 0.0 and set(wrong) == set(out)


def test_options_from_the_environment_and_the_gated_score_moves(load_extern_object, monkeypatch):
    monkeypatch.setenv("THINKRM_SCORER", "length")
    monkeypatch.setenv("THINKRM_CALIBRATION", CAL)
    monkeypatch.setenv("THINKRM_ALPHA", "0.5")
    compute_score = load_extern_object(module_path="pkg://thinkrm.verl_reward", object_name="compute_score")
    short, long = (compute_score("math", r, ["7"], {"prompt": "3 + 4?"}) for r in (RIGHT, RIGHT_LONG))
    assert 0.5 < long["score"] < short["score"] < 1.0  # alpha 0.5, and the shorter reasoning wins here
    assert short["score"] - long["score"] > 0.05


def test_uncalibrated_scorer_and_group_normalisation_are_clear_errors():
    from thinkrm.verl_reward import compute_score

    with pytest.raises(ValueError, match="has no calibration"):
        compute_score("math", RIGHT, "7", None, scorer="length")
    with pytest.raises(ValueError, match="one sample at a time"):
        compute_score("math", RIGHT, "7", None, scorer="length", normalize="group")
    with pytest.raises(TypeError, match="unknown option.*normalise"):  # a misspelt reward_kwargs key
        compute_score("math", RIGHT, "7", None, scorer="length", calibration=CAL, normalise="group")
    # verl's managers pass this one; it has no use here and is not an error.
    compute_score("math", RIGHT, "7", None, scorer="length", calibration=CAL, reward_model_path="trm")
    # normalize="none" is the paper's formula on raw scores, for a scorer centred at 0.
    out = compute_score("math", RIGHT, "7", None, scorer="length", normalize="none")
    assert out["score"] == pytest.approx(gated(1, -len("3 + 4 = 7")))


@pytest.mark.parametrize("engine", ["sglang", "vllm"])
def test_verl_reward_loop_call_scores_through_the_router(engine, tmp_path):
    """verl's reward loop adds reward_router_address (host:port, no scheme) and reward_model_tokenizer;
    the thinking score must then come from the server behind it, here a real `thinkrm serve`. A served model
    carries no calibration over HTTP, so it is given as a checkpoint path."""
    from thinkrm.io import write_json
    from thinkrm.scoring import load_scorer
    from thinkrm.serving import ServeConfig, running
    from thinkrm.verl_reward import compute_score, compute_score_async

    write_json(tmp_path / "thinkrm.json", {"calibration": Calibration(-40.0, 10.0).to_dict()})
    scorer = load_scorer("length")
    with running(scorer, ServeConfig(port=0)) as url:
        address = url.split("://", 1)[1]
        kwargs = dict(data_source="math", solution_str=RIGHT_LONG, ground_truth="7",
                      extra_info={"question": "What is 3 + 4?"}, reward_router_address=address,
                      reward_model_tokenizer=None, router_engine=engine, calibration=str(Path(tmp_path)))
        out = compute_score(**kwargs)
        assert asyncio.run(compute_score_async(**kwargs)) == out
    expected = scorer.score([("What is 3 + 4?", RIGHT_LONG.split("</think>")[0].removeprefix("<think>"))])[0]
    assert out["r_v"] == 1.0 and out["r_t"] == pytest.approx(expected)
    assert out["score"] == pytest.approx(gated(1, (expected + 40) / 10))
