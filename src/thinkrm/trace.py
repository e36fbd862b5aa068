"""Reasoning traces: the unit everything in thinkrm works on.

A trace is the text a model writes *before* its final answer. Inputs come in many shapes (a `reasoning`
field, or a full `response` with `</think>` or `<|begin_of_thought|> ... <|end_of_thought|>` markers), so
this module normalises them once, and every later stage (steps, DAG, ME², scorers) reads `Trace.reasoning`.

Field names follow the one table in `thinkrm.io`: the prompt is the first of `PROMPT_FIELDS` (`prompt`,
`question`, `problem`), the reasoning is `reasoning` as is, else the part before the end-of-thinking marker of
the first of `RESPONSE_FIELDS` (`response`, `completion`); a null field counts as absent.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .io import PROMPT_FIELDS, RESPONSE_FIELDS, InputError, first_field, iter_records

__all__ = ["PROMPT_FIELDS", "THINK_END", "THOUGHT_BEGIN", "THOUGHT_END", "Trace", "load_traces",
           "read_traces", "split_response", "trace_from_record"]  # PROMPT_FIELDS: re-exported from thinkrm.io
THINK_END = "</think>"
THOUGHT_BEGIN = "<|begin_of_thought|>"
THOUGHT_END = "<|end_of_thought|>"


@dataclass
class Trace:
    """One reasoning trace.

    `reasoning` is the thinking text (what reward models read); `answer` is whatever followed the
    end-of-thinking marker ("" when the response had no marker, in which case the whole response is the
    reasoning). `extra` carries every other input field through to outputs unchanged.
    """

    id: str
    prompt: str
    reasoning: str
    answer: str = ""
    response: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    source: str | None = None  # "file:line", for messages

    @property
    def full_response(self) -> str:
        """The response as given, or the reasoning when only `reasoning` was supplied."""
        return self.response if self.response is not None else self.reasoning

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.extra)
        d.update(id=self.id, prompt=self.prompt, reasoning=self.reasoning)
        if self.response is not None:
            d["response"] = self.response
        return d


def split_response(response: str) -> tuple[str, str]:
    """Split a model response into (reasoning, answer).

    `</think>` wins when present (the text before its last occurrence is the reasoning, so a model that
    mentions the tag while thinking is not cut early). Otherwise `<|begin_of_thought|> ... <|end_of_thought|>`
    delimit the reasoning. With no marker the whole response is the reasoning and the answer is empty.
    """
    if THINK_END in response:
        head, _, tail = response.rpartition(THINK_END)
        head = head.split("<think>", 1)[-1] if "<think>" in head else head
        return head.strip("\n"), tail.strip()
    if THOUGHT_END in response:
        head, _, tail = response.partition(THOUGHT_END)
        head = head.split(THOUGHT_BEGIN, 1)[-1]
        return head.strip("\n"), tail.strip()
    if THOUGHT_BEGIN in response:  # truncated generation: begun, never ended
        return response.split(THOUGHT_BEGIN, 1)[-1].strip("\n"), ""
    return response, ""


def trace_from_record(rec: dict[str, Any], *, default_id: str, source: str | None = None,
                      file: str | None = None, line: int | None = None,
                      require_reasoning: bool = False) -> Trace:
    """Build a `Trace` from one input record, or raise `InputError` naming the field.

    `require_reasoning` makes an empty (or all-space) reasoning an error: a score of no text means nothing,
    and `thinkrm serve` refuses it too; analysis takes it (an empty DAG).
    """

    def text_field(name: str) -> str:
        v = rec[name]
        if not isinstance(v, str):
            raise InputError(f"expected a string, got {type(v).__name__}", file=file, line=line, field=name)
        return v

    prompt_key = first_field(rec, PROMPT_FIELDS)
    if prompt_key is None:
        raise InputError(f"missing prompt (one of {', '.join(PROMPT_FIELDS)})", file=file, line=line)
    prompt = text_field(prompt_key)
    response: str | None = None
    reasoning_key = first_field(rec, ("reasoning",))
    response_key = first_field(rec, RESPONSE_FIELDS)
    if reasoning_key is not None:
        reasoning = text_field(reasoning_key)
        answer = ""
        if response_key is not None:
            response = text_field(response_key)
            answer = split_response(response)[1]
    elif response_key is not None:
        response = text_field(response_key)
        reasoning, answer = split_response(response)
    else:
        raise InputError(f"missing trace (a 'reasoning' field or one of {', '.join(RESPONSE_FIELDS)})",
                         file=file, line=line)
    if require_reasoning and not reasoning.strip():
        given = reasoning_key or response_key
        raise InputError("empty reasoning" if reasoning_key else "empty reasoning (nothing before the "
                         "end-of-thinking marker)", file=file, line=line, field=given)
    rid = rec.get("id", default_id)
    if not isinstance(rid, (str, int)) or isinstance(rid, bool):
        raise InputError(f"expected a string or integer, got {type(rid).__name__}", file=file, line=line,
                         field="id")
    used = {prompt_key, reasoning_key, response_key, "id"}
    extra = {k: v for k, v in rec.items() if k not in used}
    return Trace(id=str(rid), prompt=prompt, reasoning=reasoning, answer=answer, response=response,
                 extra=extra, source=source)


def load_traces(path: str | os.PathLike, *, skip_bad: bool = False,
                on_bad: Callable[[InputError], None] | None = None, unique_ids: bool = False,
                allow_empty: bool = True) -> Iterator[Trace]:
    """Stream traces from a JSONL file or a JSON list.

    A malformed row raises `InputError` (file, line, problem) unless `skip_bad` is set, in which case it is
    passed to `on_bad` (if given) and skipped. Rows without an `id` get their line number as id.
    `unique_ids` makes a repeated id an error of the later row (naming the earlier line); `allow_empty=False`
    makes a file without rows an error.
    """
    for trace, _ in read_traces(path, skip_bad=skip_bad, on_bad=on_bad, unique_ids=unique_ids,
                                allow_empty=allow_empty):
        yield trace


def read_traces(path: str | os.PathLike, *, skip_bad: bool = False,
                on_bad: Callable[[InputError], None] | None = None, unique_ids: bool = False,
                allow_empty: bool = True, require_reasoning: bool = False
                ) -> Iterator[tuple[Trace, dict[str, Any]]]:
    """`load_traces`, each trace with the record it came from (for commands that write the row back out with
    its fields as given); `require_reasoning` as in `trace_from_record`."""
    first_line: dict[str, int] = {}
    for line, rec in iter_records(path, allow_empty=allow_empty):
        try:
            if isinstance(rec, InputError):
                raise rec
            trace = trace_from_record(rec, default_id=str(line), source=f"{path}:{line}", file=str(path),
                                      line=line, require_reasoning=require_reasoning)
            if unique_ids:
                if trace.id in first_line:
                    raise InputError(f"duplicate id {trace.id!r} (first on line {first_line[trace.id]})",
                                     file=path, line=line, field="id")
                first_line[trace.id] = line
        except InputError as e:
            if not skip_bad:
                raise
            if on_bad is not None:
                on_bad(e)
            continue
        yield trace, rec
