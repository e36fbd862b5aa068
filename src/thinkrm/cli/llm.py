"""`thinkrm judge` and `thinkrm build-pairs`: the LLM-backed pipeline (docs/llm-pipeline.md)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import typer

from .common import command_with, config_values, console, dataclass_parameters, fail, out_option, user_errors

LLM_PANEL = "LLM server"
JUDGE_PANEL = "Judge"
BASE_URL_HELP = "OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 (env THINKRM_LLM_BASE_URL)."


@contextmanager
def _errors() -> Iterator[None]:
    """User errors plus the LLM client's errors (unreachable server, bad key, ...) as one red line."""
    from ..llm.client import LLMError

    with user_errors():
        try:
            yield
        except LLMError as e:
            fail(str(e))


def _progress_bars():
    """A rich Progress with one bar per stage, and the callback that drives it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bars = Progress(TextColumn("[bold]{task.description:<9}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, disable=not console.is_terminal)
    tasks: dict[str, Any] = {}

    def update(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bars.add_task(stage, total=total)
        bars.update(tasks[stage], completed=done, total=total)
    return bars, update


def _print_summary(summary: dict[str, Any]) -> None:
    console.print_json(json.dumps(summary, default=str))


# The LLM server flags: `LLMConfig`'s fields (its defaults; the help is kept here, LLMConfig has none).
_LLM_HELP = {
    "base_url": BASE_URL_HELP,
    "api_key": "API key (env THINKRM_LLM_API_KEY), for every endpoint.",
    "model": "Judge model (env THINKRM_LLM_MODEL).",
    "concurrency": "Requests in flight per endpoint.",
    "timeout": "Seconds per request.",
    "max_retries": "Retries on 429/5xx/timeouts/connect errors.",
}
# Generation settings of build-pairs: BuildConfig fields whose names the judge's flags already use.
_GEN_RENAME = {"temperature": "gen_temperature", "top_p": "gen_top_p", "max_tokens": "gen_max_tokens"}


def _llm_parameters() -> list:
    from ..llm.client import LLMConfig
    from .common import request_timeout

    options = {name: dict(help=text) for name, text in _LLM_HELP.items()}
    options["timeout"]["default"] = request_timeout()
    return dataclass_parameters(LLMConfig, skip=("backoff", "cache"), options=options, panel=LLM_PANEL)


def _llm_config(values: dict[str, Any], cache: Optional[Path]):
    from ..llm.client import LLMConfig

    given = {k: v for k, v in config_values(LLMConfig, values).items() if k != "cache"}  # judge's --cache is a Path
    return LLMConfig(**given, cache=str(cache) if cache else None)


def judge_cmd(**values: Any) -> None:
    """Judge pairs of correct traces with the ME² pairwise judge (both orders, repeated votes)."""
    from ..llm.judge import JudgeConfig, judge_file

    pairs, out, cache = values["pairs"], values["out"], values["cache"]
    with _errors():
        cfg = JudgeConfig(**config_values(JudgeConfig, values))
        llm = _llm_config(values, cache or out.with_name(out.name + ".cache.sqlite"))
        bars, update = _progress_bars()
        with bars:
            summary = judge_file(pairs, out, llm, cfg, on_progress=lambda d, t: update("judge", d, t))
    _print_summary(summary)
    console.print(f"verdicts: {out}")


def build_pairs_cmd(**values: Any) -> None:
    """Generate, verify, pair and judge traces into a preference dataset for `thinkrm train`."""
    from ..llm.build_pairs import BuildConfig, build_pairs
    from ..llm.judge import JudgeConfig

    problems, out = values["problems"], values["out"]
    with _errors():
        jcfg = JudgeConfig(**config_values(JudgeConfig, values))
        cfg = BuildConfig(**config_values(BuildConfig, values, rename=_GEN_RENAME), judge=jcfg)
        llm = _llm_config(values, None)
        bars, update = _progress_bars()
        with bars:
            summary = build_pairs(problems, out, llm, cfg, on_progress=update)
    _print_summary(summary)
    for note in summary["notes"]:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    console.print(f"pairs: {out} ({summary['kept']} kept of {summary['pairs_judged']} judged)")


def register(app: typer.Typer) -> None:
    # Flags, defaults and help come from JudgeConfig, BuildConfig and LLMConfig (tests/test_cli_flags.py).
    import inspect

    from ..llm.build_pairs import BuildConfig
    from ..llm.judge import JudgeConfig

    kw = inspect.Parameter.KEYWORD_ONLY
    judge_flags = dataclass_parameters(JudgeConfig, panel=JUDGE_PANEL)
    judge_params = [
        inspect.Parameter("pairs", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Path, default=typer.Argument(
            ..., help="JSONL rows with `prompt`, `a`, `b` (and optional `id`).")),
        inspect.Parameter("out", kw, annotation=Path, default=out_option(
            help="Verdicts JSONL (appended to; resumable).")),
        *judge_flags, *_llm_parameters(),
        inspect.Parameter("cache", kw, annotation=Optional[Path], default=typer.Option(
            None, help="SQLite answer cache (default: <out>.cache.sqlite).", rich_help_panel=LLM_PANEL)),
    ]
    app.command("judge")(command_with(judge_cmd, judge_params))

    build_params = [
        inspect.Parameter("problems", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Path,
                          default=typer.Argument(..., help="JSONL rows with a prompt and a gold answer "
                                                 "(`gold`/`answer`).")),
        inspect.Parameter("out", kw, annotation=Path, default=out_option(
            help="TRL-compatible preference pairs JSONL.")),
        inspect.Parameter("generators", kw, annotation=list[str], default=typer.Option(
            ..., "--generator", "-g", help="[NAME=]MODEL\\[@BASE_URL]; repeat for several generators.")),
        *dataclass_parameters(BuildConfig, skip=("generators", "judge"), rename=_GEN_RENAME,
                              options={"n": dict(param_decls=["-n"]), "k": dict(param_decls=["-k"])}),
        *judge_flags, *_llm_parameters(),
    ]
    app.command("build-pairs")(command_with(build_pairs_cmd, build_params))
