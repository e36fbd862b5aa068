"""Outcome verifiers: one interface for "is this response's final answer right?", chosen by a spec string.

`load_verifier(spec)` with

* `math` (the default everywhere): `thinkrm.verify`, math-verify in worker processes with a hard deadline;
* `choice`: multiple-choice answers, matched by letter or by option text (options read from the prompt);
* `llm:URL[,URL...]`: a model-based verifier such as TIGER-Lab/general-verifier behind OpenAI-compatible
  servers (vLLM, SGLang, `transformers serve`), asked with the general-verifier prompt.

Every verifier fails closed: a missing, ambiguous or uncheckable answer is `False`, and what could not be
checked at all (timeouts, server errors, unparseable verdicts) is counted in `last_report`. Verifiers are
picklable (TRL pickles reward functions): clients, pools and locks are rebuilt lazily after unpickling.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .verify import DEFAULT_TIMEOUT, answer_part, extract_answer, last_boxed

log = logging.getLogger(__name__)

VERIFIERS = ("math", "choice", "llm:URL")
API_KEY_ENV = "THINKRM_VERIFIER_API_KEY"


@dataclass
class VerifierReport:
    """One batch: results in input order, and how many items could not be checked (each counted False)."""

    results: list[bool]
    timeouts: int = 0
    errors: int = 0
    unparseable: int = 0  # the verifier answered, but without a usable verdict
    seconds: float = 0.0
    messages: list[str] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return self.timeouts + self.errors + self.unparseable


class Verifier(ABC):
    """Checks final answers against gold answers; also a context manager (`close` on exit)."""

    spec: str = ""
    last_report: VerifierReport | None = None

    def verify_batch(self, responses: Sequence[str], golds: Sequence[str],
                     prompts: Sequence[str] | None = None) -> list[bool]:
        """One bool per response; `prompts` (the problems) help verifiers that read them (choice, llm)."""
        return self.verify_batch_report(responses, golds, prompts).results

    def verify_batch_report(self, responses: Sequence[str], golds: Sequence[str],
                            prompts: Sequence[str] | None = None) -> VerifierReport:
        """`verify_batch` with its counts; also kept as `last_report`. Failures are logged as a warning."""
        if len(responses) != len(golds) or (prompts is not None and len(prompts) != len(responses)):
            given = "" if prompts is None else f", {len(prompts)} prompts"
            raise ValueError(f"verify_batch: {len(responses)} responses but {len(golds)} gold answers{given}")
        start = time.monotonic()
        report = self._verify(list(responses), list(golds), None if prompts is None else list(prompts))
        report.seconds = time.monotonic() - start
        self.last_report = report
        if report.failed:
            log.warning("%s: %d of %d items could not be checked (%d timed out, %d errors, %d unparseable "
                        "verdicts); counted as wrong. First: %s", self.spec, report.failed, len(responses),
                        report.timeouts, report.errors, report.unparseable, report.messages[:1])
        return report

    @abstractmethod
    def _verify(self, responses: list[str], golds: list[str], prompts: list[str] | None) -> VerifierReport:
        """The check itself, on argument lists of equal length."""

    def close(self) -> None:
        """Release connections and threads; a later call starts them again."""

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- math -----------------------------------------------------------------------------------------------

class MathVerifier(Verifier):
    """`thinkrm.verify.verify_batch`: math-verify in the shared worker-process pool, hard per-item timeout."""

    spec = "math"

    def __init__(self, *, timeout: float = DEFAULT_TIMEOUT, workers: int | None = None):
        self.timeout = timeout
        self.workers = workers

    def _verify(self, responses, golds, prompts):
        from .verify import verify_batch_report

        r = verify_batch_report(responses, golds, timeout=self.timeout, workers=self.workers)
        return VerifierReport(results=[bool(v) for v in r.results], timeouts=r.timeouts, errors=r.errors,
                              messages=r.error_messages)


# ---- multiple choice ------------------------------------------------------------------------------------

_LETTERS = "ABCDEFGHIJ"
# A lone letter may be lower case ("the answer is c"); with text after it, only upper case, so prose such
# as "a: the first..." or "i.e. ..." is not read as an option.
_LETTER_ONLY = re.compile(r"\(?([A-Ja-j])\)?")
_LETTER_TEXT = re.compile(r"(?:\(([A-J])\)|([A-J])[.:)])\s*(.+)", re.S)
_SEVERAL = re.compile(r"\(?[A-J]\)?(?:\s*(?:,|/|&|\band\b|\bor\b)\s*\(?[A-J]\)?)+", re.I)
_OPTION_WORD = re.compile(r"^(?:option|choice)\s+(?=\(?[A-Ja-j]\b)", re.I)  # not "Option pricing"
_MARKUP = re.compile(r"\\(?:text|textbf|mathrm|mathbf|boxed)\s*\{([^{}]*)\}")
# Responses (and the verifier model's replies) are untrusted text of any length: the patterns they meet run
# in linear time, with no two quantifiers that can trade the same characters (`is\s*[:=]?\s*(.+)` is
# quadratic in a run of newlines).
_STATED = re.compile(r"(?:answer|option|choice)\**\s*(?:is\s*(?:[:=]\s*)?|[:：]\s*)(.*)", re.I)
_BOLD = re.compile(r"\*\*([^*\n]{1,200}?)\*\*")
# Prompts too: option text runs greedily to the end of its line and is stripped after (`.*?` before
# `[ \t]*$` rescans a run of spaces at each step), and inline option text steps over a run of spaces at once.
_OPTION_LINE = re.compile(
    r"^[ \t]*(?:[-*][ \t]*)?(?:\((?P<p>[A-J])\)|(?P<l>[A-J])[.):])[ \t]*(?P<t>\S.*)", re.M)
_OPTION_INLINE = re.compile(
    r"\((?P<p>[A-J])\)[ \t]*(?P<t>(?:[ \t]++|[^ \t\n])+?)(?=[ \t]*\([A-J]\)|[ \t]*$)", re.M)


def _tidy(text: str) -> str:
    """Markup around an answer is not part of it: `\\text{C}`, `**C**`, `$15$`, a final full stop."""
    for _ in range(3):  # nested wrappers, e.g. \boxed{\text{C}}
        text = _MARKUP.sub(r"\1", text)
    return re.sub(r"\s+", " ", text.replace("**", "").replace("$", "")).strip().rstrip(".").strip()


def _norm(text: str) -> str:
    return _tidy(text).lower()


@dataclass(frozen=True)
class _Choice:
    letter: str | None  # "A".."J"
    text: str | None  # normalized option text


def _read_choice(answer: str | None) -> _Choice | None:
    """A letter, a letter with its option text, or option text; None when empty or naming several letters."""
    if answer is None:
        return None
    s = _OPTION_WORD.sub("", _tidy(answer))
    if not s or _SEVERAL.fullmatch(s):
        return None
    if m := _LETTER_ONLY.fullmatch(s):
        return _Choice(m.group(1).upper(), None)
    if m := _LETTER_TEXT.fullmatch(s):
        return _Choice(m.group(1) or m.group(2), _norm(m.group(3)) or None)
    return _Choice(None, s.lower())


def _stated_answer(response: str) -> str | None:
    """The response's final answer as text: a boxed answer, then the last "answer is X" / "Answer: X", then
    `extract_answer`'s other forms (`#### X`, an `A: X` line), then the last bold text, then a one-line reply.

    Statements come before `extract_answer`'s `A:` lines because a multiple-choice reply may restate the
    options ("A: 12") before it says which one it picks.
    """
    text = answer_part(response)
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    stated = list(_STATED.finditer(text))
    if stated:
        return re.split(r"\.\s", stated[-1].group(1), maxsplit=1)[0]
    found = extract_answer(response)
    if found is not None:
        return found
    bold = _BOLD.findall(text)
    if bold:
        return bold[-1]
    text = text.strip()
    return text if text and "\n" not in text else None


def parse_options(prompt: str) -> dict[str, str]:
    """The options a prompt lists, letter -> text: one per line ("A. 12", "(B) 15", "C) 18") or on one line
    ("(A) 12 (B) 15"). Only a run of consecutive letters from A counts, the last such run if several."""
    for pattern in (_OPTION_LINE, _OPTION_INLINE):
        best: dict[str, str] = {}
        run: dict[str, str] = {}
        for m in pattern.finditer(prompt):
            letter, text = m.group("p") or m.groupdict().get("l"), m.group("t").rstrip(" \t")
            if letter == "A":
                run = {"A": text}
            elif run and len(run) < len(_LETTERS) and letter == _LETTERS[len(run)]:
                run[letter] = text
            else:
                continue
            if len(run) >= 2:
                best = dict(run)
        if best:
            return best
    return {}


def _resolve(choice: _Choice, by_text: dict[str, list[str]]) -> tuple[bool, str | None]:
    """(consistent, letter): the letter a choice names or whose option text it gives (None if unknown).

    Inconsistent: a letter with the text of another option, or text shared by several options.
    """
    named = by_text.get(choice.text or "", [])
    if choice.letter is not None:
        return (not named or choice.letter in named), choice.letter
    return len(named) <= 1, (named[0] if named else None)


def choice_correct(response: str, gold: str, prompt: str | None = None) -> bool:
    """Whether `response` picks the option `gold` names (a letter such as "B", "(B)", "b", or option text)."""
    answer, want = _read_choice(_stated_answer(response)), _read_choice(gold)
    if answer is None or want is None:
        return False
    by_text: dict[str, list[str]] = {}
    for letter, text in parse_options(prompt or "").items():
        by_text.setdefault(_norm(text), []).append(letter)
    ok_a, got = _resolve(answer, by_text)
    ok_g, wanted = _resolve(want, by_text)
    if not (ok_a and ok_g):
        return False
    if got is not None and wanted is not None:
        return got == wanted
    # No letter on one side (no options in the prompt, or text that is no option): compare the texts.
    return answer.text is not None and answer.text == want.text


class ChoiceVerifier(Verifier):
    """Multiple-choice answers (letters A-J or option text); see `choice_correct`. Pure Python, no pool."""

    spec = "choice"

    def _verify(self, responses, golds, prompts):
        prompts = prompts or [None] * len(responses)
        return VerifierReport(results=[isinstance(g, str) and choice_correct(r, g, p)
                                       for r, g, p in zip(responses, golds, prompts)])


# ---- model-based ----------------------------------------------------------------------------------------

# The prompt of TIGER-Lab/general-verifier (its model card and General-Reasoner's reward worker), sent as raw
# text to /v1/completions: the model was trained on this exact "User: ... Assistant:" form, without a chat
# template, so a chat endpoint would wrap it in markup the model never saw.
GENERAL_VERIFIER_PROMPT = (
    "User: ### Question: {question}\n\n"
    "### Ground Truth Answer: {gold}\n\n"
    "### Student Answer: {answer}\n\n"
    "For the above question, please verify if the student's answer is equivalent to the ground truth "
    "answer.\n"
    "Do not solve the question by yourself; just check if the student's answer is equivalent to the ground "
    "truth answer.\n"
    "If the student's answer is correct, output \"Final Decision: Yes\". If the student's answer is "
    "incorrect, output \"Final Decision: No\". Assistant:"
)
_DECISION = re.compile(r"final\s+decision[\s*]*:[\s*]*(yes|no)\b", re.I)
# The verifier's context is small (4k tokens for general-verifier), and the answer is what it checks.
MAX_ANSWER_CHARS = 2000


def parse_decision(text: str) -> bool | None:
    """True for "Final Decision: Yes", False for "... No", None for neither or both (unparseable)."""
    said = {m.group(1).lower() for m in _DECISION.finditer(text)}
    return said == {"yes"} if len(said) == 1 else None


def student_answer(response: str) -> str | None:
    """What the verifier is shown: the extracted final answer (a boxed one first) when there is one, else the
    end of the text after the reasoning; None when there is nothing to check."""
    found = extract_answer(response)
    if found is not None:
        return found[-MAX_ANSWER_CHARS:]
    text = answer_part(response).strip()
    return text[-MAX_ANSWER_CHARS:] or None


class LLMVerifier(Verifier):
    """A model-based verifier behind one or more OpenAI-compatible servers (`llm:URL1,URL2`).

    Each item is one `/v1/completions` request with the general-verifier prompt at temperature 0; the reply
    must say "Final Decision: Yes" or "Final Decision: No". The servers are one `EndpointPool`
    (`thinkrm.endpoints`, as for the remote scorers): requests are spread over them, one that is unreachable
    or answers 429/5xx is taken out for a cooldown and the request sent to another (or, when all are out,
    retried after a backoff), up to `max_retries` failures in a row per server. A read timeout or any other
    HTTP error is not retried. `model` defaults to the first model the servers list at `/v1/models`.
    """

    def __init__(self, urls: str, *, model: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 max_tokens: int = 1024, concurrency: int = 32, api_key: str | None = None,
                 max_retries: int = 2, backoff: float = 0.5):
        from .endpoints import EndpointPool, parse_urls

        if not urls.strip():
            raise ValueError("llm verifier needs a server URL: llm:http://HOST:PORT/v1[,http://...]")
        checks = {"timeout": (timeout, timeout > 0), "max_tokens": (max_tokens, max_tokens >= 1),
                  "concurrency": (concurrency, concurrency >= 1),
                  "max_retries": (max_retries, max_retries >= 0), "backoff": (backoff, backoff >= 0)}
        for name, (value, ok) in checks.items():
            if not ok:
                raise ValueError(f"llm verifier: invalid {name} {value!r}")
        # OpenAI-compatible base URLs end in /v1; accept the server's bare address too.
        self.urls = [u if u.endswith("/v1") else u + "/v1" for u in parse_urls(urls)]
        self.spec = "llm:" + ",".join(self.urls)
        self.model = model
        self.max_tokens = max_tokens
        self.concurrency = concurrency
        api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
        auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.endpoints = EndpointPool(self.urls, headers=auth, timeout=timeout,
                                      connect_timeout=min(timeout, 10.0), retries=max_retries, backoff=backoff,
                                      max_connections=concurrency * len(self.urls))
        self._fresh_runtime()

    def _fresh_runtime(self) -> None:
        self._lock = threading.Lock()
        self._threads: ThreadPoolExecutor | None = None
        self._served: str | None = None  # the model /v1/models named

    def __getstate__(self) -> dict[str, Any]:
        runtime = {"_lock", "_threads", "_served", "last_report"}
        return {k: v for k, v in self.__dict__.items() if k not in runtime}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._fresh_runtime()

    def close(self) -> None:
        with self._lock:
            threads, self._threads = self._threads, None
        if threads is not None:
            threads.shutdown(wait=True)
        self.endpoints.close()

    def _model(self) -> str:
        if self.model:
            return self.model
        if self._served is None:
            url, resp = self.endpoints.request("GET", "/models")
            try:
                self._served = str(resp.json()["data"][0]["id"])
            except (ValueError, KeyError, IndexError, TypeError):
                raise LookupError(f"{url} names no model (HTTP {resp.status_code}); pass the verifier's "
                                  "model= option") from None
        return self._served

    def _ask(self, prompt: str) -> tuple[str, str]:
        """(outcome, detail); outcome is yes, no, unparseable, timeout or error."""
        import httpx

        from .endpoints import ServerResponseError

        try:
            body = {"model": self._model(), "prompt": prompt, "temperature": 0.0,
                    "max_tokens": self.max_tokens}
            url, resp = self.endpoints.request("POST", "/completions", json=body)
        except TimeoutError as e:
            return "timeout", str(e)
        except (ConnectionError, ValueError, LookupError, httpx.HTTPError) as e:  # ServerResponseError: 5xx
            return "error", str(e)
        try:
            text = resp.json()["choices"][0]["text"] if resp.status_code == 200 else None
        except (ValueError, KeyError, IndexError, TypeError):
            text = None
        if not isinstance(text, str):
            problem = "not a text completion" if resp.status_code == 200 else "request rejected"
            return "error", str(ServerResponseError(url, problem, status=resp.status_code, body=resp.content))
        decision = parse_decision(text)
        return {True: "yes", False: "no", None: "unparseable"}[decision], f"{url}: {text[:200]!r}"

    def _verify(self, responses, golds, prompts):
        report = VerifierReport(results=[False] * len(responses))
        jobs = []
        for i, (response, gold) in enumerate(zip(responses, golds)):
            answer = student_answer(response)
            if answer is None or not isinstance(gold, str) or not gold.strip():
                continue  # nothing to check: wrong, without asking
            question = prompts[i] if prompts is not None else ""
            jobs.append((i, GENERAL_VERIFIER_PROMPT.format(question=question, gold=gold, answer=answer)))
        if not jobs:
            return report
        with self._lock:
            if self._threads is None:
                self._threads = ThreadPoolExecutor(self.concurrency * len(self.urls),
                                                   thread_name_prefix="thinkrm-llm-verifier")
            threads = self._threads
        for (i, _), (outcome, detail) in zip(jobs, threads.map(self._ask, [p for _, p in jobs])):
            report.results[i] = outcome == "yes"
            if outcome == "timeout":
                report.timeouts += 1
            elif outcome == "error":
                report.errors += 1
            elif outcome == "unparseable":
                report.unparseable += 1
            if outcome not in ("yes", "no"):
                report.messages.append(detail)
        return report


def load_verifier(spec: str | Verifier = "math", *, timeout: float = DEFAULT_TIMEOUT,
                  workers: int | None = None, **options: Any) -> Verifier:
    """A verifier from a spec: `math`, `choice` or `llm:URL[,URL...]`; a `Verifier` instance passes through.

    `timeout` is seconds per item for `math` (a hard deadline) and per HTTP request for `llm`; `workers` is
    the size of math's process pool. `options` go to the verifier (`llm`: model, max_tokens, concurrency,
    api_key, max_retries, backoff).
    """
    if isinstance(spec, Verifier):
        return spec
    name, colon, arg = str(spec).partition(":")
    if spec == "math":
        return MathVerifier(timeout=timeout, workers=workers, **options)
    if spec == "choice":
        return ChoiceVerifier(**options)
    if name == "llm" and colon:
        return LLMVerifier(arg, timeout=timeout, **options)
    raise ValueError(f"unknown verifier spec {spec!r}; expected one of: {', '.join(VERIFIERS)} "
                     "(llm:URL1,URL2,... for several servers)")


__all__ = ["Verifier", "VerifierReport", "load_verifier", "VERIFIERS", "MathVerifier", "ChoiceVerifier",
           "LLMVerifier", "choice_correct", "parse_options", "parse_decision", "student_answer",
           "GENERAL_VERIFIER_PROMPT"]
