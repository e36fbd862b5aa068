"""The gated thinking reward as a verl custom reward function.

verl (0.9) loads `reward.custom_reward_function.path` with `verl.utils.import_utils.load_extern_object`,
either as a package module or as a standalone file, so this module imports its own package absolutely:

    reward.custom_reward_function.path=pkg://thinkrm.verl_reward    # or the path of this file
    reward.custom_reward_function.name=compute_score
    +reward.custom_reward_function.reward_kwargs.scorer=lite

verl's reward loop calls `compute_score(data_source=..., solution_str=..., ground_truth=..., extra_info=...)`
once per sample, adding `reward_router_address` and `reward_model_tokenizer` when it launched a reward model.
With a router address the thinking score comes from that model (SGLang `/v1/embeddings` or vLLM `/classify`,
chosen by `router_engine`), otherwise from the scorer spec `scorer` (default: $THINKRM_SCORER or "lite").

A sample arrives alone, so the score cannot be standardised within its GRPO group: `normalize` defaults to
"calibrated" (the scorer's own calibration, or `calibration="CENTER,SCALE"`; a router-served model needs the
latter). verl passes the response without its prompt, so the problem the TRM reads is taken from `extra_info`:
the first string among `thinkrm.io.PROMPT_FIELDS` (`prompt`, `question`, `problem`; verl's data preprocessors
write `question`); without one the TRM reads the reasoning alone. verl stores every returned key as a
per-sample column, so each sample returns the same keys as floats: r_t is computed for wrong answers too
(it is logged, though the gated score ignores it).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from thinkrm.io import PROMPT_FIELDS, first_field
from thinkrm.rewards import per_sample_normalize, shared_reward

ROUTER_ENGINES = ("sglang", "vllm")
# Keyword arguments verl's reward managers pass that this function has no use for. Anything else is a
# reward_kwargs option: an unknown one is an error, since a misspelt option would otherwise be ignored.
FRAMEWORK_KWARGS = frozenset({"reward_model_path"})


def _prompt(extra_info: Any) -> str:
    key = first_field(extra_info, PROMPT_FIELDS, str) if isinstance(extra_info, dict) else None
    return "" if key is None else extra_info[key]


def _gold(ground_truth: Any) -> str:
    # verl datasets store the reference as a string, sometimes as a number or a one-element list.
    if isinstance(ground_truth, (list, tuple)) and len(ground_truth) == 1:
        ground_truth = ground_truth[0]
    return str(ground_truth)


def _option(value: Any, env: str, default: Any) -> Any:
    """A reward kwarg, else its environment variable (for launchers that cannot set reward kwargs)."""
    if value is not None:
        return value
    return os.environ.get(env) or default


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                  *, reward_router_address: str | None = None, reward_model_tokenizer: Any = None,
                  scorer: str | None = None, alpha: float | None = None, normalize: str | None = None,
                  calibration: str | None = None, verifier: str | None = None,
                  router_engine: str | None = None, timeout: float | None = None,
                  **kwargs: Any) -> dict[str, float]:
    """`{"score": gated reward, "r_v": 0/1, "r_t": raw thinking score, "r_t_normalized": z}` for one sample.

    Options not given as arguments come from $THINKRM_SCORER, $THINKRM_ALPHA, $THINKRM_NORMALIZE,
    $THINKRM_CALIBRATION, $THINKRM_VERIFIER, $THINKRM_VERIFY_TIMEOUT and $THINKRM_ROUTER_ENGINE.
    """
    unknown = sorted(set(kwargs) - FRAMEWORK_KWARGS)
    if unknown:
        raise TypeError(f"compute_score: unknown option(s) {', '.join(unknown)}; reward_kwargs may set "
                        "scorer, alpha, normalize, calibration, verifier, router_engine and timeout")
    alpha = float(_option(alpha, "THINKRM_ALPHA", 0.2))
    router_engine = _option(router_engine, "THINKRM_ROUTER_ENGINE", "sglang")
    options: dict[str, Any] = {
        "timeout": float(_option(timeout, "THINKRM_VERIFY_TIMEOUT", 5.0)), "score_all": True,
        "normalize": per_sample_normalize(_option(normalize, "THINKRM_NORMALIZE", "calibrated")),
        "calibration": _option(calibration, "THINKRM_CALIBRATION", None),
        "verifier": _option(verifier, "THINKRM_VERIFIER", "math"),
    }
    if reward_router_address:
        if router_engine not in ROUTER_ENGINES:
            raise ValueError(f"router_engine must be one of {', '.join(ROUTER_ENGINES)}, "
                             f"got {router_engine!r}")
        address = reward_router_address
        if "://" not in address:  # verl passes host:port
            address = "http://" + address
        spec = f"{router_engine}:{address}"
    else:
        spec = _option(scorer, "THINKRM_SCORER", "lite")
    reward = shared_reward(spec, alpha, **options)
    batch = reward.compute([_prompt(extra_info)], [solution_str], [_gold(ground_truth)])
    return {"score": float(batch.rewards[0]), "r_v": float(batch.r_v[0]), "r_t": float(batch.r_t[0]),
            "r_t_normalized": float(batch.z[0])}


async def compute_score_async(data_source: str, solution_str: str, ground_truth: Any,
                              extra_info: dict | None = None, **kwargs: Any) -> dict[str, float]:
    """`compute_score` as a coroutine (verl's reward loop awaits async reward functions directly)."""
    return await asyncio.to_thread(compute_score, data_source, solution_str, ground_truth, extra_info,
                                   **kwargs)
