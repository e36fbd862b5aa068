"""The one input format every reward model in thinkrm reads, and how it is cut to fit.

`format_input(prompt, reasoning)` is `prompt + "\n" + reasoning`, the reasoning being the text before the
end-of-thinking marker (never the final answer), exactly as the published TRM-8B is served. Training,
scoring, serving and RL all call it, so a model never sees one format in training and another in use.

Two more pieces live here for the same reason:

* `InputEncoder` turns (prompt, reasoning) into token ids for one tokenizer: the formatted text, never a
  second BOS, and the truncation policy. Trainers should feed its ids to TRL as pre-tokenized
  `chosen_ids`/`rejected_ids`, so training sees exactly what scoring sees (TRL would otherwise append EOS and
  silently drop rows over `max_length`).
* `InputConfig` is the `thinkrm.json` sidecar in a saved checkpoint (`{"input_format": "plain" | "chat",
  "max_length": int}`), written at training time and read at scoring time, so the explicit chat-template
  mode follows the model automatically.

Truncation policy (a trace longer than `max_length` tokens, default 8192 for language-model backbones):
the prompt is kept whole and the *end* of the reasoning is kept, since that is where a trace reaches (or
misses) its answer; the cut is marked with `TRUNCATION_MARKER` at the start of the kept reasoning. Only if
the prompt alone would leave the reasoning less than a quarter of the budget is the prompt cut too, keeping
its beginning and ending it with `PROMPT_TRUNCATION_MARKER`. Nothing is ever dropped silently:
`Encoded.truncated` says the cut happened and scorers count it. Cutting tokenizes only a tail of the
reasoning a little longer than the budget, so a 100,000-character trace costs about `max_length` tokens of
tokenizer work, not the whole trace's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

DEFAULT_MAX_LENGTH = 8192
INPUT_FORMATS = ("plain", "chat")
TRUNCATION_MARKER = "[... earlier reasoning truncated ...]\n"
PROMPT_TRUNCATION_MARKER = "\n[... rest of prompt truncated ...]"
SIDECAR = "thinkrm.json"
# Characters per token of the budget above which a text is cut without first being tokenized whole.
_LONG_TEXT_CHARS = 6
# Tokens a tokenized tail holds beyond what the cut needs and the marker's own (see InputEncoder._tails).
_TAIL_SLACK = 32


class Item(NamedTuple):
    """What a scorer scores: the problem and the reasoning written for it."""

    prompt: str
    reasoning: str


def format_input(prompt: str, reasoning: str, *, input_format: str = "plain", tokenizer: Any = None) -> str:
    """The text a reward model reads.

    `input_format="chat"` renders a user turn (the prompt) and an assistant turn (the reasoning) with the
    tokenizer's chat template; it exists only as an explicit option, because the published TRM-8B reads
    the plain form.
    """
    if input_format == "plain":
        return prompt + "\n" + reasoning
    if input_format == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("input_format 'chat' needs a tokenizer with a chat template")
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": reasoning}]
        return tokenizer.apply_chat_template(messages, tokenize=False)
    raise ValueError(f"unknown input_format {input_format!r}; expected one of {', '.join(INPUT_FORMATS)}")


@dataclass
class InputConfig:
    """How a checkpoint wants its input; stored as `thinkrm.json` beside the weights."""

    input_format: str = "plain"
    max_length: int = DEFAULT_MAX_LENGTH

    def __post_init__(self) -> None:
        if self.input_format not in INPUT_FORMATS:
            raise ValueError(f"unknown input_format {self.input_format!r}; "
                             f"expected one of {', '.join(INPUT_FORMATS)}")
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or self.max_length < 16:
            raise ValueError(f"max_length must be an integer >= 16, got {self.max_length!r}")

    def save(self, directory: str | os.PathLike) -> Path:
        from .io import write_json

        path = Path(directory) / SIDECAR
        write_json(path, asdict(self))
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> InputConfig | None:
        """The sidecar of a checkpoint directory, or None when it has none (a plain checkpoint)."""
        from .io import InputError

        path = Path(directory) / SIDECAR
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"invalid JSON ({e})", file=path) from None
        if not isinstance(data, dict):
            raise InputError("expected a JSON object", file=path)
        try:
            return cls(input_format=data.get("input_format", "plain"),
                       max_length=data.get("max_length", DEFAULT_MAX_LENGTH))
        except ValueError as e:
            raise InputError(str(e), file=path) from None


class Encoded(NamedTuple):
    input_ids: list[int]
    truncated: bool


class _Tail(NamedTuple):
    """The last tokens of a text: their character spans within `text[start:]`."""

    pieces: Sequence[tuple[int, int]]
    start: int

    def char_of(self, token: int) -> int:
        """Where token number `token` of the tail begins in the whole text."""
        return self.start + self.pieces[token][0]


class InputEncoder:
    """Token ids of `format_input(prompt, reasoning)` for one tokenizer, within `max_length`.

    The tokenizer adds its own special tokens (BOS for Llama); a formatted text that already starts with
    the BOS string (chat templates often do) has it removed first, since a doubled BOS shifts every score.
    """

    def __init__(self, tokenizer: Any, *, max_length: int = DEFAULT_MAX_LENGTH, input_format: str = "plain"):
        if input_format not in INPUT_FORMATS:
            raise ValueError(f"unknown input_format {input_format!r}; "
                             f"expected one of {', '.join(INPUT_FORMATS)}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.input_format = input_format
        bos = tokenizer.bos_token_id
        probe = tokenizer("a", add_special_tokens=True)["input_ids"]
        self._strip_bos = tokenizer.bos_token if bos is not None and probe[:1] == [bos] else None
        # A limit that cannot even hold the markers would loop forever cutting; refuse it up front.
        markers = TRUNCATION_MARKER + PROMPT_TRUNCATION_MARKER
        marker_len = len(tokenizer(markers, add_special_tokens=False)["input_ids"])
        self._marker_len = len(tokenizer(TRUNCATION_MARKER, add_special_tokens=False)["input_ids"])
        if max_length < 4 * marker_len:
            raise ValueError(f"max_length {max_length} is too small to hold truncation markers "
                             f"({marker_len} tokens); use at least {4 * marker_len}")

    def text(self, prompt: str, reasoning: str) -> str:
        """The formatted text exactly as it is tokenized (no leading BOS string)."""
        text = format_input(prompt, reasoning, input_format=self.input_format, tokenizer=self.tokenizer)
        if self._strip_bos and text.startswith(self._strip_bos):
            text = text[len(self._strip_bos):]
        return text

    def _ids(self, pairs: Sequence[tuple[str, str]]) -> list[list[int]]:
        """Token ids of each (prompt, reasoning)."""
        return self._tokenize([self.text(p, r) for p, r in pairs])

    def _tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each formatted text, in one batched call (the Rust tokenizer uses every core)."""
        if not texts:
            return []
        return self.tokenizer(list(texts), add_special_tokens=True, verbose=False)["input_ids"]

    def _pieces(self, texts: Sequence[str]) -> list[Sequence[tuple[int, int]]]:
        """Character span of each token of each text (without special tokens)."""
        if not texts:
            return []
        enc = self.tokenizer(list(texts), add_special_tokens=False, verbose=False,
                             return_offsets_mapping=bool(getattr(self.tokenizer, "is_fast", False)))
        if "offset_mapping" in enc:
            return enc["offset_mapping"]
        # Slow tokenizers have no offsets: spread characters evenly; the fitting loop corrects the error.
        spans = []
        for ids, text in zip(enc["input_ids"], texts):
            n, size = len(ids), len(text)
            spans.append([(size * i // max(n, 1), size * (i + 1) // max(n, 1)) for i in range(n)])
        return spans

    def encode(self, prompt: str, reasoning: str) -> Encoded:
        return self.encode_batch([(prompt, reasoning)])[0]

    def encode_batch(self, items: Sequence[Item | tuple[str, str]]) -> list[Encoded]:
        """Encode many items with one batched tokenizer call; only over-long ones are cut.

        A text with more than `_LONG_TEXT_CHARS` characters per token of the budget skips that call: it is
        almost surely over the budget, and tokenizing all of a 100,000-character thinking trace only to learn
        so costs more than cutting it. `_truncate` returns such a text whole if it fits after all (see `_tails`).
        """
        items = [Item(*it) for it in items]
        texts = [self.text(p, r) for p, r in items]
        short = [i for i, t in enumerate(texts) if len(t) <= _LONG_TEXT_CHARS * self.max_length]
        out: list[Encoded | None] = [None] * len(items)
        for i, ids in zip(short, self._tokenize([texts[i] for i in short])):
            if len(ids) <= self.max_length:
                out[i] = Encoded(ids, False)
        over = [i for i, e in enumerate(out) if e is None]
        tokenized = set(short)
        unsure = [i not in tokenized for i in over]
        for i, encoded in zip(over, self._truncate([items[i] for i in over], unsure)):
            out[i] = encoded
        return out

    def _tails(self, texts: Sequence[str], needs: Sequence[int]) -> list[_Tail]:
        """The last tokens of each reasoning: `need` of them plus the marker's length plus `_TAIL_SLACK`, or all.

        Only a tail is tokenized, grown until it holds enough tokens, so cutting a long trace costs about
        `max_length` tokens of work rather than the whole trace's. The extra tokens do two jobs. The cut never
        falls on the tail's first tokens, which may split differently from the whole text. And a tail that
        does not reach the start proves the whole text over the budget: `need` is the budget left beside the
        prompt and the marker, and the whole text has the reasoning but not the marker, so it holds at least
        `_TAIL_SLACK` tokens more than the budget.
        """
        wants = [need + self._marker_len + _TAIL_SLACK for need in needs]
        sizes = [4 * want for want in wants]  # characters; real tokenizers average 3-5 per token
        out: list[_Tail | None] = [None] * len(texts)
        todo = list(range(len(texts)))
        while todo:
            starts = [max(len(texts[i]) - sizes[i], 0) for i in todo]
            pending = []
            for i, start, pieces in zip(todo, starts, self._pieces([texts[i][s:] for i, s in zip(todo, starts)])):
                if start == 0 or len(pieces) >= wants[i]:
                    out[i] = _Tail(pieces, start)
                else:
                    # As dense as the tail read so far, plus a tenth; growing by half at least bounds the rounds.
                    sizes[i] = max(sizes[i] * 3 // 2, sizes[i] * wants[i] * 11 // (10 * max(len(pieces), 1)))
                    pending.append(i)
            todo = pending
        return out

    def _truncate(self, items: Sequence[Item], unsure: Sequence[bool]) -> list[Encoded]:
        """Cut each item to `max_length` by the policy in the module docstring, each tokenizer pass batched.

        `unsure` marks items not yet tokenized whole: one whose tail reaches its start may fit after all.
        """
        prompts = [p for p, _ in items]
        frames = [len(ids) for ids in self._ids([(p, TRUNCATION_MARKER) for p in prompts])]
        tails = self._tails([r for _, r in items], [max(self.max_length - f, self.max_length // 4) for f in frames])
        out: list[Encoded | None] = [None] * len(items)
        whole = [i for i, tail in enumerate(tails) if tail.start == 0 and unsure[i]]
        for i, ids in zip(whole, self._ids([items[i] for i in whole])):
            if len(ids) <= self.max_length:
                out[i] = Encoded(ids, False)
        keep: dict[int, int] = {}
        for i, tail in enumerate(tails):
            if out[i] is not None:
                continue
            reserve = min(len(tail.pieces), self.max_length // 4)
            if self.max_length - frames[i] < reserve:
                prompts[i] = self._cut_prompt(prompts[i], frames[i] - (self.max_length - reserve))
                frames[i] = len(self._ids([(prompts[i], TRUNCATION_MARKER)])[0])
            keep[i] = min(len(tail.pieces), self.max_length - frames[i])
        # Token boundaries can merge differently once text is re-joined, so re-measure and tighten.
        while keep:
            for i in [i for i, k in keep.items() if k <= 0]:
                ids = self._ids([(prompts[i], TRUNCATION_MARKER)])[0]
                if len(ids) > self.max_length:
                    raise ValueError(f"cannot fit prompt and truncation marker into max_length {self.max_length}")
                out[i] = Encoded(ids, True)
                del keep[i]
            live = list(keep)
            starts = [tails[i].char_of(len(tails[i].pieces) - keep[i]) for i in live]
            cut = self._ids([(prompts[i], TRUNCATION_MARKER + items[i].reasoning[s:]) for i, s in zip(live, starts)])
            for i, ids in zip(live, cut):
                over = len(ids) - self.max_length
                if over <= 0:
                    out[i] = Encoded(ids, True)
                    del keep[i]
                else:
                    keep[i] -= max(over, 1)
        return out

    def _cut_prompt(self, prompt: str, excess: int) -> str:
        """Keep the beginning of a prompt, dropping about `excess` tokens (plus the marker's) from its end."""
        pieces = self._pieces([prompt])[0]
        marker = len(self.tokenizer(PROMPT_TRUNCATION_MARKER, add_special_tokens=False)["input_ids"])
        keep = max(len(pieces) - excess - marker, 0)
        end = pieces[keep - 1][1] if keep else 0
        return prompt[:end] + PROMPT_TRUNCATION_MARKER

