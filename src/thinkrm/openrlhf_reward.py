"""The gated thinking reward as an OpenRLHF custom reward file.

OpenRLHF imports a Python file given as the remote reward URL and calls its `reward_func`:

    python -m openrlhf.cli.train_ppo_ray ... \
        --reward.remote_url $(python -c 'import thinkrm.openrlhf_reward as m; print(m.__file__)') \
        --data.label_key answer        # older releases: --remote_rm_url FILE --label_key answer

It calls `reward_func(queries, prompts, labels, **kwargs)` with `queries` = prompt + response (the prompt as
formatted for the policy), `prompts` the formatted prompts and `labels` the ground-truth column, and
expects a dict: `rewards` (tensor, used for advantages), `scores` (tensor in [0, 1], used by dynamic
filtering: here r_v) and `extra_logs` (dict of tensors logged to wandb/TensorBoard: r_v and r_t).

The scorer and alpha come from $THINKRM_SCORER (default "lite"; e.g. "thinkrm:http://rm-host:8000" for a
shared `thinkrm serve`) and $THINKRM_ALPHA (default 0.2), since OpenRLHF passes no options to this file.
Alternatively point OpenRLHF at `thinkrm serve`'s `/get_reward` route, which computes the same reward.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from .rewards import shared_reward


def _response(query: str, prompt: str) -> str:
    # queries are the prompt followed by the response; a prompt that is not a prefix (e.g. re-tokenised
    # whitespace) leaves the query whole, and the verifier still reads only the final answer.
    return query[len(prompt):] if query.startswith(prompt) else query


def reward_func(queries: Sequence[str], prompts: Sequence[str], labels: Sequence[Any],
                **kwargs: Any) -> dict[str, Any]:
    import torch

    scorer = os.environ.get("THINKRM_SCORER") or "lite"
    alpha = float(os.environ.get("THINKRM_ALPHA", "0.2"))
    if not len(queries) == len(prompts) == len(labels):
        raise ValueError(f"batch sizes differ: {len(queries)} queries, {len(prompts)} prompts, "
                         f"{len(labels)} labels")
    reward = shared_reward(scorer, alpha, score_all=True)
    batch = reward.compute(list(prompts), [_response(q, p) for q, p in zip(queries, prompts)],
                           [None if label is None else str(label) for label in labels])
    rewards = torch.tensor([0.0 if r is None else r for r in batch.rewards], dtype=torch.float32)
    r_v = torch.tensor([0.0 if v is None else v for v in batch.r_v], dtype=torch.float32)
    r_t = torch.tensor([float("nan") if t is None else t for t in batch.r_t], dtype=torch.float32)
    return {"rewards": rewards, "scores": r_v, "extra_logs": {"r_v": r_v, "r_t": r_t}}
