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

Feeding an accelerator (what `score` does for a list of items):

* Items are tokenized a chunk at a time with the fast tokenizer's batch call, in a background thread that
  stays at most one chunk ahead of the forward passes, so tokenization overlaps the model instead of leaving
  the GPU idle between batches (`prefetch`; on by default on an accelerator, off on a CPU, where the
  tokenizer and the model would compete for the same cores).
* A chunk is split among `tokenizer_threads` threads (default on an accelerator: up to 8, one per core).
  The batch call releases the GIL, and the Rust tokenizer's own parallelism is off wherever
  `TOKENIZERS_PARALLELISM=false` is set (training scripts and servers often set it to silence the fork
  warning) or after a fork: then one batch call is one core, however many the machine has. The same switch makes
  `prepares` true, so `thinkrm serve` tokenizes requests (`prepare`) while the model scores earlier ones
  (`score_prepared`).
* The first chunk is one batch's worth of items, so the device starts after one batch is tokenized, and a
  call of a few batches is a pipeline too.
* Within a chunk, items are sorted by length (longest first, ties by input position, so the batching is
  deterministic) and cut into batches of at most `batch_size` items and `max_batch_tokens` padded tokens
  (rows x longest row): short items go many to a batch, long ones few, and memory stays bounded.
* On CUDA the padded batch is built in pinned host memory and copied with `non_blocking=True`; scores stay
  on the device until the chunk is done, so there is one synchronisation per chunk, not per batch.
* For decoder classifiers (a one-output `score` head over the backbone, as in Llama / Mistral / Qwen), the
  backbone's hidden state at each row's last real token is taken and the head is applied in float32, so a
  bf16 model's score is not rounded to bf16 on the way out; other architectures run their own forward and
  the logits are cast to float32.

Scores are returned in input order. A local checkpoint's calibration (the sidecar's `calibration`, see
`thinkrm.calibration`) is `scorer.calibration`, so gated rewards over it are calibrated without being told.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

from .calibration import read_calibration
from .formatting import DEFAULT_MAX_LENGTH, Encoded, InputConfig, InputEncoder, Item
from .scoring import Scorer

DTYPES = ("auto", "float32", "bfloat16", "float16")
# Padded tokens per forward pass (rows x longest row) unless `max_batch_tokens` is given: bounded activation
# memory on an accelerator (e.g. 32 rows of 2,048 tokens), small enough for a CPU's caches to matter less.
DEFAULT_BATCH_TOKENS = {"cpu": 16384, "accelerator": 65536}
DEFAULT_BATCH_SIZE = {"cpu": 8, "accelerator": 64}
# Items tokenized per chunk (at least 4 batches' worth); the background thread tokenizes chunk k+1 while chunk
# k runs. Smaller chunks overlap more of the tokenization (the first chunk's never is); larger ones sort better.
# On a CPU the tokenizer and the forward pass share the same cores, so there is nothing to overlap: no
# background thread by default, and large chunks for the best length sorting.
DEFAULT_CHUNK_ITEMS = {"cpu": 1024, "accelerator": 128}
# Threads a chunk's tokenization is split among: on a CPU the model needs the cores; on an accelerator up to 8
# (each a batch call over a slice; more slices than that cost more in Python than they win).
MAX_TOKENIZER_THREADS = 8


def default_tokenizer_threads(kind: str) -> int:
    return 1 if kind == "cpu" else max(1, min(MAX_TOKENIZER_THREADS, os.cpu_count() or 1))


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


def _placement(device: str) -> dict[str, Any]:
    """`device_map=device` where transformers takes it: weights go straight onto the device, so an 8B checkpoint
    is not first held in host memory and copied at start-up. transformers refuses a device map without
    `accelerate` installed (a bare CUDA image may lack it) and under DeepSpeed ZeRO-3 (a scorer inside a
    ZeRO-3 trainer); there the weights load on the host and are moved, as before."""
    from transformers.integrations import is_deepspeed_zero3_enabled
    from transformers.utils import is_accelerate_available

    return {"device_map": device} if is_accelerate_available() and not is_deepspeed_zero3_enabled() else {}


def plan_batches(lengths: Sequence[int], batch_size: int, max_batch_tokens: int) -> list[list[int]]:
    """Indices of `lengths` cut into batches: longest first (ties in input order), at most `batch_size`
    rows and `max_batch_tokens` padded tokens (rows x longest row) each; a row over the budget goes alone."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        if batches:
            last = batches[-1]
            width = lengths[last[0]]  # the longest row comes first
            if len(last) < batch_size and (len(last) + 1) * width <= max_batch_tokens:
                last.append(i)
                continue
        batches.append([i])
    return batches


class _Batch(NamedTuple):
    rows: list[int]  # positions of the rows in the chunk
    input_ids: Any  # LongTensor (rows, width), right-padded
    attention_mask: Any  # LongTensor (rows, width)
    last: Any  # LongTensor (rows,): index of each row's last real token
    pad: int


class _Chunk(NamedTuple):
    start: int  # position of the chunk's first item in the input
    batches: list[_Batch]
    truncated: int


class HFScorer(Scorer):
    """In-process scorer over a transformers sequence-classification checkpoint (one label)."""

    def __init__(self, arg: str, *, device: str = "auto", dtype: str = "auto", batch_size: int | None = None,
                 max_length: int | None = None, input_format: str | None = None,
                 max_batch_tokens: int | None = None, chunk_size: int | None = None,
                 prefetch: bool | None = None, tokenizer_threads: int | None = None, **_: Any):
        import torch
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        if not arg:
            raise ValueError("hf scorer needs a checkpoint: hf:PATH_OR_ID")
        self.device = pick_device(device)
        kind = "cpu" if self.device == "cpu" else "accelerator"
        batch_size = DEFAULT_BATCH_SIZE[kind] if batch_size is None else batch_size
        max_batch_tokens = DEFAULT_BATCH_TOKENS[kind] if max_batch_tokens is None else max_batch_tokens
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be >= 1, got {max_batch_tokens}")
        chunk_size = max(DEFAULT_CHUNK_ITEMS[kind], 4 * batch_size) if chunk_size is None else chunk_size
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.chunk_size = chunk_size
        self.prefetch = kind == "accelerator" if prefetch is None else prefetch
        self.tokenizer_threads = default_tokenizer_threads(kind) if tokenizer_threads is None else tokenizer_threads
        if self.tokenizer_threads < 1:
            raise ValueError(f"tokenizer_threads must be >= 1, got {tokenizer_threads}")
        self._tokenizer_pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0
        self._pool_lock = threading.Lock()
        self._pin = self.device.startswith("cuda")
        local = Path(arg).expanduser()
        is_local = local.is_dir()
        # A Hub id is NAME or ORG/NAME; anything else that is not a directory is a mistyped path, said at once
        # rather than after the Hub client's retries.
        hub_id = not arg.startswith(("/", ".", "~")) and arg.count("/") <= 1 and "\\" not in arg
        if not is_local and not hub_id:
            raise ValueError(f"cannot load hf:{arg}: no such directory")
        sidecar = InputConfig.load(local) if is_local else None
        # A checkpoint `thinkrm train` wrote records where its raw scores sit on correct traces.
        self.calibration = read_calibration(local) if is_local else None
        arg = str(local) if is_local else arg
        try:
            config = AutoConfig.from_pretrained(arg)
            # Checked before the weights load: a wrong head is then a clear message, not a shape error.
            if config.num_labels != 1:
                raise ValueError(f"hf:{arg} has {config.num_labels} labels; a reward model has exactly one "
                                 "(a scalar head)")
            self.tokenizer = AutoTokenizer.from_pretrained(arg)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                arg, config=config, dtype=_pick_dtype(dtype, self.device), **_placement(self.device))
        except OSError as e:
            # ORG/NAME may be either; a user who meant a directory should not read only about the network.
            where = "" if is_local else f"no directory {local.absolute()}, and as a Hub model id: "
            raise ValueError(f"cannot load hf:{arg}: {where}{str(e).splitlines()[0]}") from None
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
        self._head, self._backbone = self._fp32_head()

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

    def _fp32_head(self):
        """`(head, backbone)` when the model is a decoder classifier whose score is `head(hidden[last])`, so
        the head can run in float32 on the hidden state; `(None, None)` otherwise (its own forward is used).

        The shape of the model is checked, then one short input is scored both ways: an architecture that
        does more than `score(hidden)` (a pooler, a soft-cap) shows as a different score and keeps its own
        forward."""
        torch = self._torch
        model = self.model
        head = getattr(model, "score", None)
        backbone = getattr(model, getattr(model, "base_model_prefix", "") or "model", None)
        if (not isinstance(head, torch.nn.Linear) or head.out_features != 1 or backbone is None
                or backbone is model or getattr(model, "classifier", None) is not None):
            return None, None
        ids = self.encoder.encode_batch([("What is 2 + 3?", "2 + 3 = 5. So the answer is 5.")])[0].input_ids
        batch = self._build([ids], pin=False)
        try:
            mine = self._forward_head(batch, head, backbone).item()
        except Exception:  # noqa: BLE001 - a backbone that cannot be called alone keeps the full forward
            return None, None
        theirs = self._forward_full(batch).item()
        if abs(mine - theirs) > 0.02 * max(1.0, abs(theirs)):
            return None, None
        return head, backbone

    def _build(self, batch: Sequence[list[int]], rows: list[int] | None = None, pin: bool | None = None) -> _Batch:
        """Right-padded host tensors of one batch (pinned when they are bound for a GPU)."""
        import numpy as np

        torch = self._torch
        pad = self._pad_id({ids[-1] for ids in batch})
        lengths = np.fromiter((len(ids) for ids in batch), dtype=np.int64, count=len(batch))
        width = int(lengths.max())
        ids_np = np.full((len(batch), width), pad, dtype=np.int64)
        for row, ids in enumerate(batch):
            ids_np[row, :len(ids)] = ids
        mask_np = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
        tensors = [torch.from_numpy(ids_np), torch.from_numpy(mask_np), torch.from_numpy(lengths - 1)]
        if self._pin if pin is None else pin:
            tensors = [t.pin_memory() for t in tensors]
        return _Batch(list(range(len(batch))) if rows is None else rows, *tensors, pad)

    def _to_device(self, t):
        return t.to(self.device, non_blocking=self._pin)

    def _forward_head(self, batch: _Batch, head=None, backbone=None):
        """Backbone forward, hidden state at each row's last real token, score head in float32."""
        torch = self._torch
        head, backbone = head or self._head, backbone or self._backbone
        with torch.inference_mode():
            out = backbone(input_ids=self._to_device(batch.input_ids),
                           attention_mask=self._to_device(batch.attention_mask))
            hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state
            last = self._to_device(batch.last)
            picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), last].float()
            bias = None if head.bias is None else head.bias.float()
            return torch.nn.functional.linear(picked, head.weight.float(), bias)[:, 0]

    def _forward_full(self, batch: _Batch):
        """The model's own forward (its own pooling), logits cast to float32."""
        torch = self._torch
        self._text_config.pad_token_id = batch.pad
        with torch.inference_mode():
            out = self.model(input_ids=self._to_device(batch.input_ids),
                             attention_mask=self._to_device(batch.attention_mask))
        return out.logits[:, 0].float()

    def _forward(self, batch: _Batch):
        return self._forward_head(batch) if self._head is not None else self._forward_full(batch)

    def score_ids(self, batch: Sequence[list[int]]) -> list[float]:
        """Scores of already-encoded inputs, one forward pass (no sorting, no splitting)."""
        return self._forward(self._build(batch)).cpu().tolist()

    def _plan(self, inputs: Sequence[list[int]], start: int = 0, truncated: int = 0) -> _Chunk:
        """A chunk's padded batches, ready to go to the device."""
        batches = [self._build([inputs[i] for i in rows], rows)
                   for rows in plan_batches([len(ids) for ids in inputs], self.batch_size, self.max_batch_tokens)]
        return _Chunk(start, batches, truncated)

    def _run(self, chunks: Iterator[_Chunk], total: int) -> list[float]:
        """Forward every batch of every chunk; one device synchronisation per chunk; scores in input order."""
        torch = self._torch
        scores = [0.0] * total
        for chunk in chunks:
            rows, outs = [], []
            for batch in chunk.batches:
                outs.append(self._forward(batch))
                rows.extend(batch.rows)
            if not outs:
                continue
            values = torch.cat(outs).cpu().tolist()  # waits for this chunk's batches, not each one
            for row, value in zip(rows, values):
                scores[chunk.start + row] = value
            self.truncated += chunk.truncated
        return scores

    def _encoded_chunks(self, items: Sequence[Item | tuple[str, str]], first: int) -> Iterator[_Chunk]:
        bounds = [0, *range(first, len(items), self.chunk_size), len(items)]
        for start, end in zip(bounds, bounds[1:]):
            encoded = self._encode(items[start:end])
            yield self._plan([e.input_ids for e in encoded], start, sum(e.truncated for e in encoded))

    def score(self, items: Sequence[Item | tuple[str, str]]) -> list[float]:
        items = list(items)
        # The device waits for the first chunk's tokens whatever happens: one batch's worth, not a chunk's. A
        # call of a few batches (an RL step's completions) is then already a pipeline of two chunks.
        first = min(self.batch_size, self.chunk_size)
        if not (self.prefetch and len(items) > first):
            return self._run(self._encoded_chunks(items, self.chunk_size), len(items))
        return self._run(_prefetched(self._encoded_chunks(items, first)), len(items))

    @property
    def prepares(self) -> bool:
        # The same switch as the prefetching in `score`: on a CPU the tokenizer would take the model's cores.
        return self.prefetch

    def prepare(self, items: Sequence[Item | tuple[str, str]]) -> list[Encoded]:
        """Token ids of each item (the shared format, truncation policy), for `score_prepared`."""
        return self._encode(items)

    def _encode(self, items: Sequence[Item | tuple[str, str]]) -> list[Encoded]:
        """`encoder.encode_batch(items)`, split among the tokenizer threads when there are enough items."""
        threads = min(self.tokenizer_threads, len(items) // 2)  # at least 2 items a slice
        if threads <= 1:
            return self.encoder.encode_batch(items)
        step = -(-len(items) // threads)
        parts = self._tokenizers().map(self.encoder.encode_batch,
                                       [items[i:i + step] for i in range(0, len(items), step)])
        return [e for part in parts for e in part]

    def _tokenizers(self) -> ThreadPoolExecutor:
        """The tokenizer threads, made on first use; `prepare` and `score` may both get here at once."""
        with self._pool_lock:
            if self._tokenizer_pool is None or self._pool_pid != os.getpid():
                # The tokenizer's truncation and padding are settled (the first call resets them), so the
                # threads only read that state: a write during a concurrent call fails with "Already borrowed".
                self.encoder.encode_batch([("", "")])
                # A forked child inherits the pool without its threads, and would wait on it forever.
                self._tokenizer_pool = ThreadPoolExecutor(self.tokenizer_threads, "thinkrm-hf-tokenize")
                self._pool_pid = os.getpid()
            return self._tokenizer_pool

    def score_prepared(self, prepared: Sequence[Encoded]) -> list[float]:
        scores = self.score_encoded([e.input_ids for e in prepared])
        self.truncated += sum(e.truncated for e in prepared)  # once scored: a failed call is retried
        return scores

    def score_encoded(self, inputs: Sequence[list[int]]) -> list[float]:
        """Scores of already-encoded inputs (e.g. the token ids a model was trained on), in input order."""
        inputs = list(inputs)
        chunks = (self._plan(inputs[s:s + self.chunk_size], s) for s in range(0, len(inputs), self.chunk_size))
        return self._run(chunks, len(inputs))

    def close(self) -> None:
        with self._pool_lock:
            if self._tokenizer_pool is not None:
                self._tokenizer_pool.shutdown(wait=True)
                self._tokenizer_pool = None
        self.model = None
        if self.device.startswith("cuda"):
            self._torch.cuda.empty_cache()


_DONE = object()


def _prefetched(chunks: Iterator[_Chunk], depth: int = 1) -> Iterator[_Chunk]:
    """`chunks`, produced by a background thread at most `depth` chunks ahead of the consumer.

    The fast tokenizer releases the GIL while it encodes a batch, so the next chunk is tokenized while the
    current one runs on the device. An error in the producer is raised in the consumer; a consumer that stops
    early (an error in a forward pass) stops the producer too.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(x) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for chunk in chunks:
                if not put(chunk):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            put(e)
            return
        put(_DONE)

    thread = threading.Thread(target=produce, name="thinkrm-hf-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            x = q.get()
            if x is _DONE:
                return
            if isinstance(x, BaseException):
                raise x
            yield x
    finally:
        stop.set()
        thread.join()
