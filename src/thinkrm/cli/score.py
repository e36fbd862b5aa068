"""`thinkrm score` (add a reward score to every trace) and `thinkrm eval-pairs` (pairwise accuracy)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import typer

from .common import console, count_lines, progress, user_errors

# Traces per scorer call: enough for batching and request concurrency; at most this much is redone on resume.
SCORE_CHUNK = 128


@dataclass
class ScoreResult:
    scored: int = 0  # rows scored by this run
    resumed: int = 0  # rows already in the output from an earlier run
    skipped: list[str] = field(default_factory=list)  # bad rows (with --skip-bad)
    truncated: int = 0


def scorer_options(batch_size: int | None = None, device: str | None = None, dtype: str | None = None,
                   timeout: float | None = None, retries: int | None = None,
                   api_key: str | None = None) -> dict[str, Any]:
    """Only the options the user gave, so each backend keeps its own defaults."""
    given = dict(batch_size=batch_size, device=device, dtype=dtype, timeout=timeout, retries=retries,
                 api_key=api_key)
    return {k: v for k, v in given.items() if v is not None}


def run_score(traces: str | Path, out: str | Path, scorer: str, *, resume: bool = False,
              skip_bad: bool = False, show_progress: bool = True, **options: Any) -> ScoreResult:
    """Stream `traces` into `out` with a `score` field added to each row, resumable by `id`.

    Rows are written as they are scored (one flushed line each), so a killed run keeps its work and
    `resume=True` skips ids already in `out`. Rows keep every input field; a row without `id` gets its line
    number as `id`, which is what resuming matches on.
    """
    from ..formatting import Item
    from ..io import InputError, ResumableJsonl, iter_records
    from ..scoring import load_scorer
    from ..trace import trace_from_record

    traces = Path(traces)
    if not traces.is_file():
        raise InputError("file not found" if not traces.exists() else "not a file", file=traces)
    if Path(out).resolve() == traces.resolve():
        raise ValueError("output file must differ from the input file")
    result = ScoreResult()
    seen: dict[str, int] = {}

    def rows():
        for line, rec in iter_records(traces):
            try:
                if isinstance(rec, InputError):
                    raise rec
                trace = trace_from_record(rec, default_id=str(line), file=str(traces), line=line)
                if trace.id in seen:
                    raise InputError(f"duplicate id {trace.id!r} (first on line {seen[trace.id]})",
                                     file=traces, line=line, field="id")
                seen[trace.id] = line
            except InputError as e:
                if not skip_bad:
                    raise
                result.skipped.append(str(e))
                console.print(f"[yellow]skipped[/] {e}", highlight=False)
                continue
            yield trace, rec

    scorer_obj = load_scorer(scorer, **options)
    try:
        with ResumableJsonl(out, key="id", resume=resume) as store:
            batch: list[tuple[Any, dict[str, Any]]] = []

            def flush() -> None:
                scores = scorer_obj.score([Item(t.prompt, t.reasoning) for t, _ in batch])
                if len(scores) != len(batch):
                    raise ValueError(f"scorer {scorer_obj.spec!r} returned {len(scores)} scores "
                                     f"for {len(batch)} items")
                store.add_many({**rec, "id": rec.get("id", trace.id), "score": s} for (trace, rec), s in zip(batch, scores))
                result.scored += len(batch)
                batch.clear()

            stream = rows()
            if show_progress:
                stream = progress(stream, "scoring", total=count_lines(traces))
            for trace, rec in stream:
                if trace.id in store:
                    result.resumed += 1
                    continue
                batch.append((trace, rec))
                if len(batch) >= SCORE_CHUNK:
                    flush()
            if batch:
                flush()
        result.truncated = scorer_obj.truncated
    finally:
        scorer_obj.close()
    return result


def run_eval_pairs(pairs: str | Path, out_dir: str | Path, scorer: str, *, length_tolerance: float = 0.10,
                   show_progress: bool = True, **options: Any) -> dict[str, Any]:
    """Evaluate `scorer` on a pairs file; writes `out_dir/outputs.jsonl` and `out_dir/results.json`.

    Both files appear only when the whole evaluation succeeded (atomic writes).
    """
    from ..evaluate import evaluate_pairs
    from ..io import InputError, atomic_write, dumps, write_json
    from ..scoring import load_scorer

    pairs, out_dir = Path(pairs), Path(out_dir)
    if not pairs.is_file():
        raise InputError("file not found" if not pairs.exists() else "not a file", file=pairs)
    if not 0 <= length_tolerance < 1:
        raise ValueError("--length-tolerance must be in [0, 1)")
    scorer_obj = load_scorer(scorer, **options)
    try:
        with atomic_write(out_dir / "outputs.jsonl") as f:
            total = count_lines(pairs)
            wrap = (lambda stream: progress(stream, "pairs", total=total)) if show_progress else None
            results = evaluate_pairs(pairs, scorer_obj, length_tolerance=length_tolerance, progress=wrap,
                                     on_pair=lambda row: f.write(dumps(row) + "\n"))
        results["input"] = str(pairs)
        write_json(out_dir / "results.json", results)
    finally:
        scorer_obj.close()
    return results


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def print_eval(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    err, out = console, Console()  # results go to stdout; messages stay on stderr
    base = results["baselines"]["length"]
    table = Table(title=f"pairwise accuracy · {results['input']}", title_justify="left")
    matched = f"length-matched (±{results['length_matched']['tolerance']:.0%})"
    for col in ("scorer", "accuracy", "pairs", "ties", matched):
        table.add_column(col, justify="left" if col == "scorer" else "right")
    for name, r in ((results["scorer"], results), ("length (baseline)", base)):
        lm = r["length_matched"]
        table.add_row(name, _pct(r["accuracy"]), str(r["num_pairs"]), str(r["ties"]),
                      f"{_pct(lm['accuracy'])} of {lm['num_pairs']}")
    out.print(table)
    if "per_kind" in results:
        kinds = Table(title="per kind", title_justify="left")
        for col in ("kind", "pairs", results["scorer"], "length"):
            kinds.add_column(col, justify="left" if col == "kind" else "right")
        for kind, r in results["per_kind"].items():
            kinds.add_row(kind, str(r["num_pairs"]), _pct(r["accuracy"]),
                          _pct(base["per_kind"][kind]["accuracy"]))
        out.print(kinds)
    bad = results["bad_rows"]
    if bad["count"]:
        err.print(f"[yellow]{bad['count']} bad rows skipped[/]; first: " + "; ".join(bad["examples"][:3]),
                  highlight=False)
    if results["truncated_inputs"]:
        err.print(f"[yellow]{results['truncated_inputs']} inputs were truncated[/] to the model's max length "
                  "(end of reasoning kept)", highlight=False)


def register(app: typer.Typer) -> None:
    batch_opt = typer.Option(None, "--batch-size", min=1, help="Items per model batch / per server request.")
    device_opt = typer.Option(None, help="hf: device (auto, cpu, cuda, cuda:1, mps).")
    dtype_opt = typer.Option(None, help="hf: dtype (auto, float32, bfloat16, float16).")
    timeout_opt = typer.Option(None, help="Remote scorers: seconds to wait for an answer.")
    retries_opt = typer.Option(None, min=0, help="Remote scorers: retries on connection errors, 429 and 5xx.")
    key_opt = typer.Option(None, "--api-key", help="Remote scorers: bearer token (thinkrm:URL also reads "
                           "$THINKRM_API_KEY; other servers get a key only when it is given here).")
    scorer_help = "Scorer: lite (the embedded TRM-lite), hf:PATH, sglang:URL, vllm:URL, openrlhf:URL, thinkrm:URL, length, random."

    @app.command("score")
    def score_cmd(
        traces: Path = typer.Argument(..., help="Traces (JSONL or JSON list): prompt + reasoning/response."),
        scorer: str = typer.Option("lite", "--scorer", "-s", help=scorer_help),
        out: Path = typer.Option(..., "-o", "--out", help="Output JSONL: every input row plus `score`."),
        resume: bool = typer.Option(False, "--resume", help="Keep rows already in the output."),
        skip_bad: bool = typer.Option(False, "--skip-bad", help="Report and skip malformed rows."),
        batch_size: Optional[int] = batch_opt, device: Optional[str] = device_opt,
        dtype: Optional[str] = dtype_opt, timeout: Optional[float] = timeout_opt,
        retries: Optional[int] = retries_opt, api_key: Optional[str] = key_opt,
    ) -> None:
        """Add a reward score to every trace (streaming, resumable with --resume)."""
        with user_errors():
            res = run_score(traces, out, scorer, resume=resume, skip_bad=skip_bad,
                            **scorer_options(batch_size, device, dtype, timeout, retries, api_key))
        parts = [f"scored {res.scored} rows"]
        if res.resumed:
            parts.append(f"kept {res.resumed} from the earlier run")
        if res.skipped:
            parts.append(f"skipped {len(res.skipped)} bad rows")
        if res.truncated:
            parts.append(f"{res.truncated} truncated to max length")
        console.print(", ".join(parts) + f" -> {out}", highlight=False)

    @app.command("eval-pairs")
    def eval_pairs_cmd(
        pairs: Path = typer.Argument(..., help="Pairs: prompt, chosen, rejected [, kind, margin]."),
        scorer: str = typer.Option("lite", "--scorer", "-s", help=scorer_help),
        out: Path = typer.Option(..., "-o", "--out", help="Output directory: results.json, outputs.jsonl."),
        length_tolerance: float = typer.Option(0.10, help="Max relative length gap of length-matched pairs."),
        batch_size: Optional[int] = batch_opt, device: Optional[str] = device_opt,
        dtype: Optional[str] = dtype_opt, timeout: Optional[float] = timeout_opt,
        retries: Optional[int] = retries_opt, api_key: Optional[str] = key_opt,
    ) -> None:
        """Pairwise accuracy of a scorer (ties count as wrong), per kind, with the length baseline."""
        with user_errors():
            results = run_eval_pairs(pairs, out, scorer, length_tolerance=length_tolerance,
                                     **scorer_options(batch_size, device, dtype, timeout, retries, api_key))
        print_eval(results)
        console.print(f"wrote {out / 'results.json'} and {out / 'outputs.jsonl'}", highlight=False)
