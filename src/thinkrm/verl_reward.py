"""The gated thinking reward as a verl custom reward function.

verl imports a file and calls one function per sample. Point it here:

    custom_reward_function.path=$(python -c 'import thinkrm.verl_reward as m; print(m.__file__)')
    custom_reward_function.name=compute_score

verl calls `compute_score(data_source=..., solution_str=..., ground_truth=..., extra_info=...)`; its reward
loop (the default from verl 0.7/0.8 on) adds `reward_router_address`, `reward_model_tokenizer` and (newer)
`reward_model_path`. With a router address the thinking score comes from the reward model verl launched
behind that router (SGLang `/v1/embeddings` or vLLM `/classify`, chosen by `router_engine`), otherwise from
the scorer spec `scorer` (default: $THINKRM_SCORER or "lite"). Options reach this function through
`custom_reward_function.reward_kwargs` (`scorer`, `alpha`, `router_engine`, `timeout`).

verl passes the response without its prompt, so the problem the TRM reads is taken from `extra_info`
(`question`, `prompt` or `problem`, as verl's data preprocessors write it); without one the TRM reads the
reasoning alone. verl stores every returned key as a per-sample column, so each sample returns all three
keys as floats: r_t is computed for wrong answers too (it is logged, though the gated score ignores it).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from .rewards import shared_reward

PROMPT_KEYS = ("question", "prompt", "problem")
ROUTER_ENGINES = ("sglang", "vllm")


def _prompt(extra_info: Any) -> str:
    if isinstance(extra_info, dict):
        for k in PROMPT_KEYS:
            if isinstance(extra_info.get(k), str):
                return extra_info[k]
    return ""


def _gold(ground_truth: Any) -> str:
    # verl datasets store the reference as a string, sometimes as a number or a one-element list.
    if isinstance(ground_truth, (list, tuple)) and len(ground_truth) == 1:
        ground_truth = ground_truth[0]
    return str(ground_truth)


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                  *, reward_router_address: str | None = None, scorer: str | None = None,
                  alpha: float | None = None, router_engine: str | None = None, timeout: float = 5.0,
                  **kwargs: Any) -> dict[str, float]:
    """`{"score": gated reward, "r_v": 0/1 verifier result, "r_t": raw thinking score}` for one sample.

    Options not given as arguments come from $THINKRM_SCORER, $THINKRM_ALPHA and $THINKRM_ROUTER_ENGINE,
    for verl versions where reward kwargs cannot be set from the config.
    """
    alpha = float(os.environ.get("THINKRM_ALPHA", "0.2")) if alpha is None else float(alpha)
    router_engine = router_engine or os.environ.get("THINKRM_ROUTER_ENGINE") or "sglang"
    options: dict[str, Any] = {"timeout": timeout, "score_all": True}
    if reward_router_address:
        if router_engine not in ROUTER_ENGINES:
            raise ValueError(f"router_engine must be one of {', '.join(ROUTER_ENGINES)}, "
                             f"got {router_engine!r}")
        address = reward_router_address
        if "://" not in address:  # verl passes host:port
            address = "http://" + address
        spec = f"{router_engine}:{address}"
        if kwargs.get("reward_model_path"):
            options["scorer_options"] = (("model", kwargs["reward_model_path"]),)
    else:
        spec = scorer or os.environ.get("THINKRM_SCORER") or "lite"
    reward = shared_reward(spec, alpha, **options)
    batch = reward.compute([_prompt(extra_info)], [solution_str], [_gold(ground_truth)])
    return {"score": float(batch.rewards[0]), "r_v": float(batch.r_v[0]), "r_t": float(batch.r_t[0])}


async def compute_score_async(data_source: str, solution_str: str, ground_truth: Any,
                              extra_info: dict | None = None, **kwargs: Any) -> dict[str, float]:
    """`compute_score` as a coroutine (verl's reward loop awaits async reward functions directly)."""
    return await asyncio.to_thread(compute_score, data_source, solution_str, ground_truth, extra_info,
                                   **kwargs)
