"""The gated thinking reward as an OpenRLHF custom reward file.

OpenRLHF (0.11) imports the Python file given as the remote reward URL as a standalone module named
`reward_func` (no package, so this file imports thinkrm absolutely) and calls its `reward_func`:

    python -m openrlhf.cli.train_ppo_ray ... \
        --reward.remote_url $(python -c 'import thinkrm.openrlhf_reward as m; print(m.__file__)') \
        --data.label_key answer

It calls `reward_func(queries, prompts, labels)` for one sample at a time, from worker threads: `queries` =
the prompt and response tokens decoded with their special tokens, `prompts` the chat-templated prompt and
`labels` the ground-truth column. It expects a dict: `rewards` (tensor, used for advantages), `scores`
(tensor, used by dynamic filtering: here r_v, the 0/1 correctness) and `extra_logs` (tensors logged to
wandb/TensorBoard: r_v, r_t and the normalised r_t).

The TRM reads the problem (the last user turn of the templated prompt) and the reasoning, as it was trained.
Options come from the environment, since OpenRLHF passes none to this file: $THINKRM_SCORER (default "lite";
e.g. "thinkrm:http://rm-host:8000" for a shared `thinkrm serve`), $THINKRM_ALPHA (0.2), $THINKRM_NORMALIZE
("calibrated": a sample arrives alone, so there is no group to standardise over), $THINKRM_CALIBRATION,
$THINKRM_VERIFIER ("math") and $THINKRM_VERIFY_TIMEOUT (5 s; raise it for an `llm:` verifier).
Alternatively point OpenRLHF at `thinkrm serve`'s `/get_reward` route.

OpenRLHF logs an exception inside `reward_func` at INFO level and carries on without a reward, so a bad
option would surface far from its cause. When OpenRLHF loads this file (as the module `reward_func`), the
options are therefore checked and the scorer loaded right away, failing the executor's construction instead.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from thinkrm.rewards import (
    ThinkingReward,
    per_sample_normalize,
    problem_from_chat,
    recover_response,
    shared_reward,
)


def _reward() -> ThinkingReward:
    env = os.environ.get
    return shared_reward(
        env("THINKRM_SCORER") or "lite", float(env("THINKRM_ALPHA") or 0.2), score_all=True,
        normalize=per_sample_normalize(env("THINKRM_NORMALIZE") or "calibrated"),
        calibration=env("THINKRM_CALIBRATION") or None, verifier=env("THINKRM_VERIFIER") or "math",
        timeout=float(env("THINKRM_VERIFY_TIMEOUT") or 5.0))


def reward_func(queries: Sequence[str], prompts: Sequence[str], labels: Sequence[Any],
                **kwargs: Any) -> dict[str, Any]:
    import torch

    if not len(queries) == len(prompts) == len(labels):
        raise ValueError(f"batch sizes differ: {len(queries)} queries, {len(prompts)} prompts, "
                         f"{len(labels)} labels")
    reward = _reward()
    responses = []
    for i, (query, prompt) in enumerate(zip(queries, prompts)):
        try:
            responses.append(recover_response(query, prompt))
        except ValueError as e:
            raise ValueError(f"sample {i}: {e}") from None
    batch = reward.compute([problem_from_chat(p) for p in prompts], responses,
                           [None if label is None else str(label) for label in labels])
    rewards = torch.tensor([0.0 if r is None else r for r in batch.rewards], dtype=torch.float32)
    r_v = torch.tensor([0.0 if v is None else v for v in batch.r_v], dtype=torch.float32)
    r_t = torch.tensor([float("nan") if t is None else t for t in batch.r_t], dtype=torch.float32)
    z = torch.tensor([float("nan") if t is None else t for t in batch.z], dtype=torch.float32)
    return {"rewards": rewards, "scores": r_v, "extra_logs": {"r_v": r_v, "r_t": r_t, "r_t_normalized": z}}


if __name__ == "reward_func":  # loaded by OpenRLHF's executor: fail now on a bad option, not per sample
    _checked = _reward()
    _checked.scorer, _checked.verifier  # noqa: B018 (loading them is the check)
    _checked.resolved_normalize()
