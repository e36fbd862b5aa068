"""Preference pairs: the one loader that training and pairwise evaluation share.

Rows follow TRL's preference format: `prompt`, `chosen`, `rejected`, each a string or a list of chat
messages, plus optional `margin` (a number) and `kind` (a string, e.g. the perturbation that made the
rejected side). TRL's "implicit prompt" form, where `chosen` and `rejected` are whole conversations and there
is no `prompt`, is accepted too. The prompt is the first of `thinkrm.io.PROMPT_FIELDS` (`prompt`, `question`,
`problem`) with a value, as for traces.

What a reward model reads is `format_input(prompt, reasoning)`, so `Pair.chosen` / `Pair.rejected` hold the
*reasoning* of each side: a response carrying an end-of-thinking marker is cut before it (see
`thinkrm.trace.split_response`), and a message list contributes its last assistant message. Validation
happens here, once, so a bad row is reported with file:line and field instead of failing an hour into a run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .io import PROMPT_FIELDS, InputError, first_field, iter_records
from .trace import split_response


@dataclass
class Pair:
    """One validated preference pair; `chosen` and `rejected` are reasoning texts, never final answers."""

    id: str
    prompt: str
    chosen: str
    rejected: str
    margin: float | None = None
    kind: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    source: str | None = None  # "file:line", for messages


def _message_text(value: list, want_role: str, err: Callable[[str], InputError]) -> str:
    """Content of the last message with role `want_role` in a chat-message list."""
    for i, m in enumerate(value):
        if not (isinstance(m, dict) and isinstance(m.get("content"), str) and isinstance(m.get("role"), str)):
            raise err(f"message {i} must be an object with string 'role' and 'content'")
    picked = [m["content"] for m in value if m["role"] == want_role]
    if not picked:
        raise err(f"no '{want_role}' message in the list")
    return picked[-1]


def pair_from_record(rec: dict[str, Any], *, default_id: str, file: str | None = None,
                     line: int | None = None) -> Pair:
    """Validate one row and build a `Pair`, or raise `InputError` naming the field."""

    def err(fieldname: str) -> Callable[[str], InputError]:
        return lambda msg: InputError(msg, file=file, line=line, field=fieldname)

    def side(name: str) -> str:
        if name not in rec:
            raise err(name)("missing")
        v = rec[name]
        if isinstance(v, list):
            v = _message_text(v, "assistant", err(name))
        elif not isinstance(v, str):
            raise err(name)(f"expected a string or a list of messages, got {type(v).__name__}")
        reasoning = split_response(v)[0]
        if not reasoning.strip():
            raise err(name)("empty reasoning")
        return reasoning

    prompt_key = first_field(rec, PROMPT_FIELDS)
    if prompt_key is not None:
        p = rec[prompt_key]
        if isinstance(p, list):
            prompt = _message_text(p, "user", err(prompt_key))
        elif isinstance(p, str):
            prompt = p
        else:
            raise err(prompt_key)(f"expected a string or a list of messages, got {type(p).__name__}")
    elif isinstance(rec.get("chosen"), list):  # implicit prompt: the conversation carries it
        prompt = _message_text(rec["chosen"], "user", err("chosen"))
    else:
        raise InputError(f"missing prompt (one of {', '.join(PROMPT_FIELDS)})", file=file, line=line)

    chosen, rejected = side("chosen"), side("rejected")
    if chosen == rejected:
        raise err("rejected")("identical to 'chosen'")

    margin = rec.get("margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))):
        raise err("margin")(f"expected a number, got {type(margin).__name__}")
    kind = rec.get("kind")
    if kind is not None and not isinstance(kind, str):
        raise err("kind")(f"expected a string, got {type(kind).__name__}")
    rid = rec.get("id", default_id)
    if not isinstance(rid, (str, int)) or isinstance(rid, bool):
        raise err("id")(f"expected a string or integer, got {type(rid).__name__}")

    used = {prompt_key, "chosen", "rejected", "margin", "kind", "id"}
    extra = {k: v for k, v in rec.items() if k not in used}
    where = f"{file}:{line}" if file is not None else None
    return Pair(id=str(rid), prompt=prompt, chosen=chosen, rejected=rejected,
                margin=None if margin is None else float(margin), kind=kind, extra=extra, source=where)


def load_pairs(path: str | os.PathLike, *, skip_bad: bool = False,
               on_bad: Callable[[InputError], None] | None = None) -> Iterator[Pair]:
    """Stream validated pairs from a JSONL file or JSON list.

    A bad row raises `InputError` (file, line, field) unless `skip_bad` is set; then it goes to `on_bad`
    (if given) and is skipped, so long jobs can count and report bad rows instead of dying on them. Rows
    without an `id` get their line number.
    """
    for line, rec in iter_records(path):
        try:
            if isinstance(rec, InputError):
                raise rec
            yield pair_from_record(rec, default_id=str(line), file=str(path), line=line)
        except InputError as e:
            if not skip_bad:
                raise
            if on_bad is not None:
                on_bad(e)
