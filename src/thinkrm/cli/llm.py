"""`thinkrm judge` and `thinkrm build-pairs`: the LLM-backed pipeline (docs/llm-pipeline.md)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import typer

from .common import console, fail, user_errors

LLM_PANEL = "LLM server"
JUDGE_PANEL = "Judge"
BASE_URL_HELP = "OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 (env THINKRM_LLM_BASE_URL)."


@contextmanager
def _errors() -> Iterator[None]:
    """User errors plus the LLM client's errors (unreachable server, bad key, ...) as one red line."""
    from ..llm import LLMError

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


def register(app: typer.Typer) -> None:
    def llm_config(base_url, api_key, model, concurrency, timeout, max_retries, cache):
        from ..llm import LLMConfig

        return LLMConfig(base_url=base_url, api_key=api_key, model=model, concurrency=concurrency,
                         timeout=timeout, max_retries=max_retries, cache=str(cache) if cache else None)

    @app.command("judge")
    def judge_cmd(
        pairs: Path = typer.Argument(..., help="JSONL rows with `prompt`, `a`, `b` (and optional `id`)."),
        output: Path = typer.Option(..., "-o", "--output", help="Verdicts JSONL (appended to; resumable)."),
        repeats: int = typer.Option(3, help="Votes per presentation order.", rich_help_panel=JUDGE_PANEL),
        view: str = typer.Option("structured", help="structured (macro/micro views) or raw (prompt-only baseline).",
                                 rich_help_panel=JUDGE_PANEL),
        structurer: str = typer.Option("heuristic", help="DAG structurer: heuristic, embedding, llm, llm-batch.",
                                       rich_help_panel=JUDGE_PANEL),
        llm_summaries: bool = typer.Option(False, help="LLM one-sentence summaries in the macro view.",
                                           rich_help_panel=JUDGE_PANEL),
        temperature: float = typer.Option(0.7, rich_help_panel=JUDGE_PANEL),
        max_tokens: int = typer.Option(1024, help="Per judge answer.", rich_help_panel=JUDGE_PANEL),
        invalid_retries: int = typer.Option(2, help="Re-asks after an answer without a valid decision.",
                                            rich_help_panel=JUDGE_PANEL),
        max_trace_chars: int = typer.Option(24000, help="Per view of each trace; longer ones keep head+tail.",
                                            rich_help_panel=JUDGE_PANEL),
        early_stop: bool = typer.Option(True, help="Stop a pair once it can no longer be kept.",
                                        rich_help_panel=JUDGE_PANEL),
        base_url: Optional[str] = typer.Option(None, help=BASE_URL_HELP, rich_help_panel=LLM_PANEL),
        api_key: Optional[str] = typer.Option(None, help="API key (env THINKRM_LLM_API_KEY).",
                                              rich_help_panel=LLM_PANEL),
        model: Optional[str] = typer.Option(None, help="Judge model (env THINKRM_LLM_MODEL).",
                                            rich_help_panel=LLM_PANEL),
        concurrency: int = typer.Option(8, help="Requests in flight.", rich_help_panel=LLM_PANEL),
        timeout: float = typer.Option(120.0, help="Seconds per request.", rich_help_panel=LLM_PANEL),
        max_retries: int = typer.Option(5, help="On 429/5xx/timeouts.", rich_help_panel=LLM_PANEL),
        cache: Optional[Path] = typer.Option(None, help="SQLite answer cache [default: <output>.cache.sqlite].",
                                             rich_help_panel=LLM_PANEL),
    ) -> None:
        """Judge pairs of correct traces with the ME² pairwise judge (both orders, repeated votes)."""
        from ..judge import JudgeConfig, judge_file

        with _errors():
            cfg = JudgeConfig(repeats=repeats, view=view, structurer=structurer, llm_summaries=llm_summaries,
                              temperature=temperature, max_tokens=max_tokens, invalid_retries=invalid_retries,
                              max_trace_chars=max_trace_chars, early_stop=early_stop)
            llm = llm_config(base_url, api_key, model, concurrency, timeout, max_retries,
                             cache or output.with_name(output.name + ".cache.sqlite"))
            bars, update = _progress_bars()
            with bars:
                summary = judge_file(pairs, output, llm, cfg, on_progress=lambda d, t: update("judge", d, t))
        _print_summary(summary)
        console.print(f"verdicts: {output}")

    @app.command("build-pairs")
    def build_pairs_cmd(
        problems: Path = typer.Argument(..., help="JSONL rows with a prompt and a gold answer (`gold`/`answer`)."),
        output: Path = typer.Option(..., "-o", "--output", help="TRL-compatible preference pairs JSONL."),
        generator: list[str] = typer.Option(..., "--generator", "-g",
                                            help="[NAME=]MODEL[@BASE_URL]; repeat for several generators."),
        n: int = typer.Option(4, "-n", help="Traces per problem and generator."),
        k: int = typer.Option(4, "-k", help="Pairs per problem, at most."),
        gen_temperature: float = typer.Option(0.8, help="Generation temperature."),
        top_p: float = typer.Option(0.95, help="Generation top-p."),
        gen_max_tokens: int = typer.Option(4096, help="Generation max tokens."),
        seed: int = typer.Option(0, help="Seed of the pair sampling."),
        verifier: str = typer.Option("math", help="Answer checker: math, choice, llm:URL[,URL...] "
                                     "(docs/bon-and-rl.md, Verifiers)."),
        verify_timeout: float = typer.Option(5.0, help="Seconds per verified answer (hard, wall clock; llm: "
                                             "per request)."),
        work_dir: Optional[Path] = typer.Option(None, help="Stage stores and cache [default: <output>.work]."),
        repeats: int = typer.Option(3, help="Judge votes per presentation order.", rich_help_panel=JUDGE_PANEL),
        view: str = typer.Option("structured", help="structured or raw.", rich_help_panel=JUDGE_PANEL),
        structurer: str = typer.Option("heuristic", help="heuristic, embedding, llm, llm-batch.",
                                       rich_help_panel=JUDGE_PANEL),
        llm_summaries: bool = typer.Option(False, help="LLM summaries in the macro view.",
                                           rich_help_panel=JUDGE_PANEL),
        temperature: float = typer.Option(0.7, help="Judge temperature.", rich_help_panel=JUDGE_PANEL),
        max_trace_chars: int = typer.Option(24000, rich_help_panel=JUDGE_PANEL),
        base_url: Optional[str] = typer.Option(None, help=BASE_URL_HELP, rich_help_panel=LLM_PANEL),
        api_key: Optional[str] = typer.Option(None, help="API key (env THINKRM_LLM_API_KEY), all endpoints.",
                                              rich_help_panel=LLM_PANEL),
        model: Optional[str] = typer.Option(None, help="Judge model (env THINKRM_LLM_MODEL).",
                                            rich_help_panel=LLM_PANEL),
        concurrency: int = typer.Option(8, help="Requests in flight per endpoint.", rich_help_panel=LLM_PANEL),
        timeout: float = typer.Option(300.0, help="Seconds per request.", rich_help_panel=LLM_PANEL),
        max_retries: int = typer.Option(5, rich_help_panel=LLM_PANEL),
    ) -> None:
        """Generate, verify, pair and judge traces into a preference dataset for `thinkrm train`."""
        from ..build_pairs import BuildConfig, build_pairs
        from ..judge import JudgeConfig

        with _errors():
            jcfg = JudgeConfig(repeats=repeats, view=view, structurer=structurer, llm_summaries=llm_summaries,
                               temperature=temperature, max_trace_chars=max_trace_chars)
            cfg = BuildConfig(generators=list(generator), n=n, k=k, temperature=gen_temperature, top_p=top_p,
                              max_tokens=gen_max_tokens, seed=seed, verify_timeout=verify_timeout,
                              verifier=verifier, work_dir=str(work_dir) if work_dir else None, judge=jcfg)
            llm = llm_config(base_url, api_key, model, concurrency, timeout, max_retries, None)
            bars, update = _progress_bars()
            with bars:
                summary = build_pairs(problems, output, llm, cfg, on_progress=update)
        _print_summary(summary)
        for note in summary["notes"]:
            console.print(f"[yellow]note:[/] {note}", highlight=False)
        console.print(f"pairs: {output} ({summary['kept']} kept of {summary['pairs_judged']} judged)")
