"""The rules a request's content must follow, checked before any scoring.

Every rejection is a 4xx whose `detail` names the field or the limit (`--max-items`, `--max-chars`, text no
scorer can take, pydantic's validation errors made readable), so bad input never reaches the scorer.

How `/v1/embeddings` and `/classify` recover (prompt, reasoning) from one string: TRM-8B is served with
`format_input(prompt, reasoning) = prompt + "\\n" + reasoning`, so the text is split at its *first* newline.
For model scorers this is exact: `format_input` of the two halves rebuilds the same bytes, so the model sees
exactly what SGLang would have fed it. A prompt that itself spans lines leaves its later lines at the head
of the reasoning; clients that know the split should use `/score`, which takes the two fields separately.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..formatting import Item
from ..io import text_problem
from ..rewards import recover_response as _recover_response
from .config import ServeConfig
from .errors import RequestProblem


def split_formatted(text: str) -> Item:
    """(prompt, reasoning) of an already-formatted `prompt + "\\n" + reasoning` string (see module doc).

    Text without a newline is all reasoning with an empty prompt: a bare trace is the common case then.
    """
    prompt, sep, reasoning = text.partition("\n")
    return Item(prompt, reasoning) if sep else Item("", text)


def recover_response(query: str, prompt: str, index: int) -> str:
    """The response part of an OpenRLHF `query` (`thinkrm.rewards.recover_response`), or a 422."""
    try:
        return _recover_response(query, prompt)
    except ValueError:
        raise RequestProblem(422, f"query[{index}] does not contain prompts[{index}], so the response cannot "
                                  "be recovered; send the prompt exactly as it appears in the query") from None


class Limits:
    def __init__(self, config: ServeConfig):
        self.max_items = config.max_items
        self.max_chars = config.max_chars

    def count(self, n: int, field_name: str) -> None:
        if n == 0:
            raise RequestProblem(422, f"{field_name} is empty: send at least one item")
        if n > self.max_items:
            raise RequestProblem(413, f"{field_name} has {n} items, more than the limit of {self.max_items} "
                                      "per request (--max-items)")

    def text(self, value: str, where: str, *, allow_empty: bool = False) -> str:
        if not allow_empty and not value.strip():
            raise RequestProblem(422, f"{where} is empty")
        if len(value) > self.max_chars:
            raise RequestProblem(422, f"{where} has {len(value)} characters, more than the limit of "
                                      f"{self.max_chars} (--max-chars)")
        return check_text(value, where)


def check_text(value: str, where: str) -> str:
    """`value`, or a 422 naming `where` and the first character no scorer or verifier can take.

    JSON can carry what UTF-8 cannot: "\\ud800" decodes to a lone surrogate, which tokenizers refuse (the
    scorer then fails for every request merged with it). The rule is the one input files follow
    (`thinkrm.io.text_problem`), so a row `thinkrm score` refuses is refused here too."""
    problem = text_problem(value)
    if problem is None:
        return value
    raise RequestProblem(422, f"{where} {problem}")


def validation_message(errors: Sequence[dict[str, Any]]) -> str:
    """One readable clause per pydantic error, e.g. `items[0].prompt: Input should be a valid string`.

    For a union field (`input: str | list[str]`) pydantic reports every branch; an error located inside
    an element is kept and the vaguer whole-field one dropped, so the message points at the bad element.
    """
    located = []
    for err in errors:
        loc = tuple(p for p in err.get("loc", ()) if p != "body" and not _is_branch_tag(p))
        if err.get("type") == "json_invalid":
            ctx = err.get("ctx") or {}
            pos = f" at character {loc[0]}" if loc else ""
            located.append(((), f"malformed JSON{pos}: {ctx.get('error', err.get('msg'))}"))
        else:
            located.append((loc, err.get("msg", "invalid")))
    parts = []
    for loc, msg in located:
        if loc and any(other[:len(loc)] == loc and len(other) > len(loc) for other, _ in located):
            continue
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
        parts.append(f"{where}: {msg}" if where else msg)
    parts = list(dict.fromkeys(parts))
    more = f" (and {len(parts) - 5} more)" if len(parts) > 5 else ""
    return "; ".join(parts[:5]) + more


def _is_branch_tag(part: Any) -> bool:
    """Pydantic names union branches in `loc` (`'str'`, `'list[str]'`); they are not fields."""
    return isinstance(part, str) and ("[" in part or part in {"str", "float", "int", "none", "bool"})
