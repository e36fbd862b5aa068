"""`hf:PATH_OR_ID`: score with any one-label `AutoModelForSequenceClassification` checkpoint in-process.

The published TRM-8B is a `LlamaForSequenceClassification`; anything that loads the same way works. Three
details decide whether scores are right, and all three are handled here rather than left to the checkpoint:

* Decoder models read the score at the rightmost token that is not `config.pad_token_id`. Checkpoints
  without a pad token (or with pad == EOS, as in Llama-3 chat models whose chat turns end in EOS) would be
  read at the wrong position or refuse batches, so each batch is padded with an id that is no row's last
  real token, and the config is pointed at it for that forward pass.
* Padding is done here, always on the right (encoder models pool position 0; decoder models pool the last
  real token), so the tokenizer's `padding_side` cannot change scores.
* Tokens come from `thinkrm.formatting.InputEncoder`: the shared format, one BOS, the truncation policy, and
  the checkpoint's `thinkrm.json` sidecar (input format, max length) when it has one.

Items are sorted by length before batching, so a batch wastes little on padding, and scores are returned in
input order. A local checkpoint's calibration (the sidecar's `calibration`, see `thinkrm.calibration`) is
`scorer.calibration`, so gated rewards over it are calibrated without being told.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .calibration import read_calibration
from .formatting import DEFAULT_MAX_LENGTH, InputConfig, InputEncoder, Item
from .scoring import Scorer

DTYPES = ("auto", "float32", "bfloat16", "float16")


def pick_device(device: str = "auto") -> str:
    """`auto` -> cuda, then mps, then cpu."""
    if device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _pick_dtype(dtype: str, device: str):
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    if dtype == "auto":
        # Half precision only where it is fast; CPU bf16 matmuls are slow on most machines.
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, dtype)


class HFScorer(Scorer):
    """In-process scorer over a transformers sequence-classification checkpoint (one label)."""

    def __init__(self, arg: str, *, device: str = "auto", dtype: str = "auto", batch_size: int = 8,
                 max_length: int | None = None, input_format: str | None = None, **_: Any):
        import torch
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        if not arg:
            raise ValueError("hf scorer needs a checkpoint: hf:PATH_OR_ID")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = pick_device(device)
        self.batch_size = batch_size
        local = Path(arg).expanduser()
        if arg.startswith(("/", ".", "~")) and not local.is_dir():
            raise ValueError(f"cannot load hf:{arg}: no such directory")
        sidecar = InputConfig.load(local) if local.is_dir() else None
        # A checkpoint `thinkrm train` wrote records where its raw scores sit on correct traces.
        self.calibration = read_calibration(local) if local.is_dir() else None
        arg = str(local) if local.is_dir() else arg
        try:
            config = AutoConfig.from_pretrained(arg)
            # Checked before the weights load: a wrong head is then a clear message, not a shape error.
            if config.num_labels != 1:
                raise ValueError(f"hf:{arg} has {config.num_labels} labels; a reward model has exactly one "
                                 "(a scalar head)")
            self.tokenizer = AutoTokenizer.from_pretrained(arg)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                arg, config=config, dtype=_pick_dtype(dtype, self.device))
        except OSError as e:
            raise ValueError(f"cannot load hf:{arg}: {str(e).splitlines()[0]}") from None
        self.model.to(self.device).eval()
        self._text_config = self.model.config.get_text_config()

        limit = max_length or (sidecar.max_length if sidecar else DEFAULT_MAX_LENGTH)
        positions = getattr(self._text_config, "max_position_embeddings", None)
        if isinstance(positions, int) and positions > 0:
            limit = min(limit, positions)
        mode = input_format or (sidecar.input_format if sidecar else "plain")
        self.encoder = InputEncoder(self.tokenizer, max_length=limit, input_format=mode)
        tok = self.tokenizer
        # A pad id equal to EOS is no pad id at all: a text that ends in EOS would be read one token early.
        distinct = tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
        self._pad = tok.pad_token_id if distinct else None
        self._torch = torch

    @property
    def max_length(self) -> int:
        return self.encoder.max_length

    @property
    def input_format(self) -> str:
        return self.encoder.input_format

    def _pad_id(self, last_tokens: set[int]) -> int:
        """The checkpoint's pad id, or else the smallest id that ends no row in this batch."""
        if self._pad is not None and self._pad not in last_tokens:
            return self._pad
        return next(i for i in range(len(last_tokens) + 1) if i not in last_tokens)

    def score_ids(self, batch: Sequence[list[int]]) -> list[float]:
        """Scores of already-encoded inputs, one forward pass (no sorting, no splitting)."""
        torch = self._torch
        pad = self._pad_id({ids[-1] for ids in batch})
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[row, :len(ids)] = 1
        self._text_config.pad_token_id = pad
        with torch.inference_mode():
            out = self.model(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device))
        logits = out.logits
        return logits[:, 0].float().cpu().tolist()

    def score(self, items: Sequence[Item | tuple[str, str]]) -> list[float]:
        encoded = self.encoder.encode_batch(items)
        self.truncated += sum(e.truncated for e in encoded)
        return self.score_encoded([e.input_ids for e in encoded])

    def score_encoded(self, inputs: Sequence[list[int]]) -> list[float]:
        """Scores of already-encoded inputs (e.g. the token ids a model was trained on), in input order."""
        order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]), reverse=True)
        scores = [0.0] * len(inputs)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            for i, s in zip(chunk, self.score_ids([inputs[i] for i in chunk])):
                scores[i] = s
        return scores

    def close(self) -> None:
        self.model = None
        if self.device.startswith("cuda"):
            self._torch.cuda.empty_cache()
