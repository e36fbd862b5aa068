"""`thinkrm analyze`: traces -> steps -> DAG -> ME² signals, as `analysis.jsonl` plus an HTML report."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import typer

from .common import DEFAULT_SCORER, console, count_lines, out_option, progress, scorer_option, user_errors

STRUCTURERS = ("heuristic", "embedding")
SCORE_BATCH = 32  # traces scored per scorer call: model backends batch well, and memory stays bounded
SUMMARY_ROWS = 30


@dataclass
class AnalyzeResult:
    rows: list[dict[str, Any]]  # one summary row per trace (the table the CLI prints)
    skipped: list[str]  # messages for rows skipped with --skip-bad
    analysis_path: Path
    report_path: Path


def run_analyze(traces: str | Path, out: str | Path, *, structurer: str = "heuristic", skip_bad: bool = False,
                limit: int | None = None, scorer: str | None = None, title: str | None = None,
                show_progress: bool = True) -> AnalyzeResult:
    """Analyse every trace of a JSONL/JSON-list file into `out/analysis.jsonl` and `out/index.html`.

    Both files are streamed to temporaries and renamed into place only when the whole input has been
    processed, so a bad row (without `skip_bad`), a crash or Ctrl-C never leaves a half-written output.
    Ids must be unique (the report links traces by id): a repeat is an error naming both lines, or with
    `skip_bad` the later row is skipped. An empty input file is an error.
    """
    from ..dag import build_dag
    from ..formatting import Item
    from ..io import InputError, atomic_write, check_output_dir, check_output_file, dumps
    from ..me2 import analyze
    from ..report import ReportWriter
    from ..scoring import load_scorer, score_chunks
    from ..trace import read_traces

    if structurer not in STRUCTURERS:
        raise ValueError(f"unknown structurer {structurer!r}; expected one of: {', '.join(STRUCTURERS)}")
    if limit is not None and limit < 0:
        raise ValueError("--limit must be >= 0")
    traces, out = Path(traces), Path(out)
    if not traces.is_file():
        raise InputError("file not found" if not traces.exists() else "not a file", file=traces)
    check_output_dir(out)
    analysis_path, report_path = out / "analysis.jsonl", out / "index.html"
    for path in (analysis_path, report_path):
        check_output_file(path, inputs=[traces])
    skipped: list[str] = []
    rows: list[dict[str, Any]] = []
    scorer = resolve_scorer(scorer)
    scorer_obj = load_scorer(scorer) if scorer else None

    def on_bad(e: InputError) -> None:
        skipped.append(str(e))
        console.print(f"[yellow]skipped[/] {e}", highlight=False)

    stream = read_traces(traces, skip_bad=skip_bad, on_bad=on_bad, unique_ids=True, allow_empty=False)
    total = count_lines(traces) if show_progress else None  # a second full read, only for a visible bar
    if show_progress and limit is not None:
        total = min(total, limit) if total is not None else limit
    created = not out.exists()
    try:
        with atomic_write(analysis_path) as jf, atomic_write(report_path) as hf:
            report = ReportWriter(hf, title=title or f"thinkrm · {traces.name}", structurer=structurer)

            def write(batch: list[tuple[Any, Any, Any]], scores: list[float] | list[None]) -> None:
                for (trace, rec, result), score in zip(batch, scores):
                    # The row as given (its field names too, so it joins back on them), plus what was found.
                    record = {**rec, "id": rec.get("id", trace.id), "reasoning": trace.reasoning}
                    record.update(steps=[s.to_dict() for s in result.dag.steps], dag=result.dag.to_dict(),
                                  me2=result.to_dict())
                    if score is not None:
                        record["score"] = score
                    jf.write(dumps(record) + "\n")
                    report.add(trace, result, score)
                    rows.append(_summary_row(trace.id, result, score))

            def analyzed() -> Iterator[list[tuple[Any, Any, Any]]]:
                items = stream if limit is None else islice(stream, limit)
                batch: list[tuple[Any, Any, Any]] = []
                for trace, rec in progress(items, "analyzing", total=total) if show_progress else items:
                    batch.append((trace, rec, analyze(trace, dag=build_dag(trace.reasoning, structurer))))
                    if len(batch) >= SCORE_BATCH:
                        yield batch
                        batch = []
                if batch:
                    yield batch

            if scorer_obj is None:
                for batch in analyzed():
                    write(batch, [None] * len(batch))
            else:  # a GPU scorer tokenizes the next batch while this one is on the model
                for batch, scores in score_chunks(scorer_obj, analyzed(),
                                                  lambda b: [Item(t.prompt, t.reasoning) for t, _, _ in b]):
                    write(batch, scores)
            report.finish()
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):  # a failed run leaves no empty folder behind
            out.rmdir()
        raise
    finally:
        if scorer_obj is not None:
            scorer_obj.close()
    return AnalyzeResult(rows=rows, skipped=skipped, analysis_path=analysis_path, report_path=report_path)


def resolve_scorer(spec: str | None) -> str | None:
    """`none` turns scoring off; anything else is a scorer spec (the default, `lite`, ships with the package)."""
    return None if spec is None or spec == "none" else spec


def _summary_row(trace_id: str, result, score: float | None) -> dict[str, Any]:
    flat = result.flat()
    row = {"id": trace_id, "steps": result.size["steps"], "supernodes": result.size["supernodes"], **flat}
    if score is not None:
        row["score"] = score
    return row


def _print_summary(res: AnalyzeResult) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    out = Console()
    if not out.is_terminal:
        out = Console(width=150)  # piped or captured: rich's 80-column default would truncate every cell
    rows = res.rows
    has_score = any("score" in r for r in rows)
    plural = "s" if len(rows) != 1 else ""
    table = Table(title=f"ME² summary ({len(rows)} trace{plural})", header_style="bold", box=box.SIMPLE_HEAD,
                  padding=(0, 0, 0, 1), pad_edge=False, show_edge=False)
    # Two-word headers and light borders so the table fits an 80-column terminal.
    cols = [("id", "id"), ("steps", "steps"), ("supernodes", "super nodes"), ("backtracks", "back tracks"),
            ("off_path_share", "off path"), ("dead_ends", "dead ends"), ("filler_per_1k", "filler /1k"),
            ("near_duplicate_steps", "near dup"), ("self_corrections", "self corr"),
            ("arith", "arith wrong")]
    if has_score:
        cols.append(("score", "score"))
    # The numeric columns need about 68 characters; the id column gets what is left (ellipsised if need be).
    id_width = min(24, max(8, out.width - 70), max((len(r["id"]) for r in rows[:SUMMARY_ROWS]), default=2))
    for key, label in cols:
        if key == "id":
            table.add_column(label, overflow="ellipsis", no_wrap=True, min_width=id_width, max_width=id_width)
        else:  # a narrow terminal wraps a header at its space rather than cutting the numbers
            table.add_column(label, justify="right", min_width=max(map(len, label.split())))
    for r in rows[:SUMMARY_ROWS]:
        cells = []
        for key, _ in cols:
            if key == "arith":
                cells.append(f"{r['arithmetic_wrong']}/{r['arithmetic_checked']}")
            elif key == "off_path_share":
                cells.append(f"{r[key]:.0%}")
            elif key == "filler_per_1k":
                cells.append(f"{r[key]:.1f}")
            elif key == "score":
                cells.append("–" if r.get("score") is None else f"{r['score']:.3f}")
            else:
                cells.append(str(r[key]))
        table.add_row(*cells)
    if len(rows) > SUMMARY_ROWS:
        table.caption = f"first {SUMMARY_ROWS} of {len(rows)} traces; all of them are in the report"
    out.print(table)
    if res.skipped:
        out.print(f"[yellow]{len(res.skipped)} bad row(s) skipped[/] (listed above)")
    out.print(f"wrote {res.analysis_path} and the report [bold]{res.report_path}[/]"
              f" (open file://{res.report_path.resolve()})", highlight=False, soft_wrap=True)


def analyze_command(
    traces: Path = typer.Argument(..., help="traces as JSONL or a JSON list (prompt + reasoning/response)"),
    out: Path = out_option(help="output directory for analysis.jsonl and index.html"),
    structurer: str = typer.Option("heuristic", help="who proposes DAG actions: heuristic | embedding"),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="report and skip malformed rows, don't stop"),
    limit: int | None = typer.Option(None, "--limit", help="analyse only the first N traces"),
    scorer: str = scorer_option(DEFAULT_SCORER),
) -> None:
    """Split traces into steps, build their reasoning DAGs, compute ME² signals, write a browsable report.

    Ids must be unique: a repeat is an error naming both lines (--skip-bad skips the later row).
    An input without rows is an error.
    """
    with user_errors():
        res = run_analyze(traces, out, structurer=structurer, skip_bad=skip_bad, limit=limit, scorer=scorer)
    _print_summary(res)


def register(app: typer.Typer) -> None:
    app.command("analyze")(analyze_command)
