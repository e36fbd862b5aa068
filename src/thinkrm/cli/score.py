"""`thinkrm score` (add a reward score to every trace) and `thinkrm eval-pairs` (pairwise accuracy)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import typer

from ..io import InputError
from .common import console, count_lines, out_option, progress, request_timeout, scorer_option, user_errors

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

    Every row is validated before its chunk is scored (`thinkrm.io`, `thinkrm.trace`: bad text, empty
    reasoning, repeated ids), and a row the scorer itself fails on costs only that row (`_rows_scored`), so
    one bad row never loses the good rows around it. An input without any row is an error, raised before
    `out` is touched.
    """
    from itertools import chain

    from ..formatting import Item
    from ..io import ResumableJsonl, check_output_file
    from ..scoring import load_scorer, score_chunks
    from ..trace import read_traces

    traces = Path(traces)
    if not traces.is_file():
        raise InputError("file not found" if not traces.exists() else "not a file", file=traces)
    check_output_file(out, inputs=[traces])
    result = ScoreResult()

    def on_bad(e: InputError) -> None:
        if not skip_bad:
            raise e
        result.skipped.append(str(e))
        console.print(f"[yellow]skipped[/] {e}", highlight=False)

    # Rows found bad while reading are reported with their chunk, in line order with the rows the scorer
    # fails on: reading runs a chunk ahead of scoring (score_chunks), so reporting them as read would put a
    # bad row of the next chunk before a failed row of this one.
    read_bad: list[InputError] = []

    def on_read_bad(e: InputError) -> None:
        if not skip_bad:
            raise e
        read_bad.append(e)

    def take_read_bad() -> list[InputError]:
        taken = read_bad[:]
        read_bad.clear()
        return taken

    rows = read_traces(traces, skip_bad=True, on_bad=on_read_bad, unique_ids=True, allow_empty=False,
                       require_reasoning=True)
    # The first good row is read before the output is opened: an empty input (or a bad first row) then
    # fails without emptying an earlier output.
    first = next(rows, None)
    scorer_obj = load_scorer(scorer, **options)
    try:
        with ResumableJsonl(out, key="id", resume=resume) as store:
            stream = rows if first is None else chain([first], rows)
            if show_progress:
                stream = progress(stream, "scoring", total=count_lines(traces))

            Chunk = tuple[list[tuple[Any, dict[str, Any]]], list[InputError]]  # rows, and bad rows among them

            def chunks() -> Iterator[Chunk]:
                batch: list[tuple[Any, dict[str, Any]]] = []
                try:
                    for trace, rec in stream:
                        if trace.id in store:
                            result.resumed += 1
                            continue
                        batch.append((trace, rec))
                        if len(batch) >= SCORE_CHUNK:
                            yield batch, take_read_bad()
                            batch = []
                except InputError:
                    if batch:  # the good rows before the bad one are kept, so --resume goes on from there
                        yield batch, take_read_bad()
                    raise
                if batch:
                    yield batch, take_read_bad()

            # A GPU scorer tokenizes the next chunk while this one is on the model (score_chunks).
            # keep_going: a chunk the scorer fails is retried row by row (_rows_scored), and the run goes on.
            for (batch, bad), got in score_chunks(scorer_obj, chunks(),
                                                  lambda c: [Item(t.prompt, t.reasoning) for t, _ in c[0]],
                                                  keep_going=True):
                scored = _rows_scored(scorer_obj, batch, got)
                store.add_many({**rec, "id": rec.get("id", trace.id), "score": s}
                               for (trace, rec), s in zip(batch, scored) if not isinstance(s, InputError))
                result.scored += sum(not isinstance(s, InputError) for s in scored)
                failed = [s for s in scored if isinstance(s, InputError)]
                for e in sorted(bad + failed, key=lambda e: e.line or 0):  # after the good rows are written
                    on_bad(e)
            for e in take_read_bad():  # bad rows after the last good one
                on_bad(e)
        result.truncated = scorer_obj.truncated
    finally:
        scorer_obj.close()
    return result


def _rows_scored(scorer, batch: list[tuple[Any, dict[str, Any]]], got: list[float] | Exception
                 ) -> list[float | InputError]:
    """Scores of a chunk of (trace, record) rows given what scoring the chunk gave (`got`), with an `InputError`
    in place of each row the scorer fails on.

    When the whole chunk failed, each row is scored alone, so a row that a model or server cannot take costs
    that row, not the chunk. Failures that are not about rows are raised as they are: an unreachable or
    overloaded server (`OSError`, HTTP 429/5xx after retries), or every row failing (a broken scorer).
    """
    from ..endpoints import RETRY_STATUSES, ServerResponseError
    from ..formatting import Item
    from ..scoring import checked_scores

    def about_rows(e: Exception) -> bool:
        if isinstance(e, ServerResponseError):
            return e.status not in RETRY_STATUSES
        return not isinstance(e, OSError)

    if not isinstance(got, Exception):
        return list(got)
    if len(batch) == 1 or not about_rows(got):
        raise got
    chunk_error = got
    items = [Item(t.prompt, t.reasoning) for t, _ in batch]
    out: list[float | InputError] = []
    for (trace, _), item in zip(batch, items):
        try:
            out.append(checked_scores(scorer, [item])[0])
        except Exception as e:
            if not about_rows(e):
                raise
            file, _, line = (trace.source or "").rpartition(":")
            out.append(InputError(f"the scorer failed on this row: {type(e).__name__}: {e}",
                                  file=file or None, line=int(line) if line.isdigit() else None))
    if all(isinstance(s, InputError) for s in out):
        raise chunk_error
    return out


def run_eval_pairs(pairs: str | Path, out_dir: str | Path, scorer: str, *, length_tolerance: float = 0.10,
                   show_progress: bool = True, **options: Any) -> dict[str, Any]:
    """Evaluate `scorer` on a pairs file; writes `out_dir/outputs.jsonl` and `out_dir/results.json`.

    Both files appear only when the whole evaluation succeeded (atomic writes); an input without a single
    valid pair is an error, not an empty result.
    """
    from ..evaluate import evaluate_pairs
    from ..io import atomic_write, check_output_dir, check_output_file, dumps, write_json
    from ..scoring import load_scorer

    pairs, out_dir = Path(pairs), Path(out_dir)
    if not pairs.is_file():
        raise InputError("file not found" if not pairs.exists() else "not a file", file=pairs)
    if not 0 <= length_tolerance < 1:
        raise ValueError("--length-tolerance must be in [0, 1)")
    check_output_dir(out_dir)
    for name in ("outputs.jsonl", "results.json"):
        check_output_file(out_dir / name, inputs=[pairs])
    scorer_obj = load_scorer(scorer, **options)
    try:
        with atomic_write(out_dir / "outputs.jsonl") as f:
            total = count_lines(pairs)
            wrap = (lambda stream: progress(stream, "pairs", total=total)) if show_progress else None
            results = evaluate_pairs(pairs, scorer_obj, length_tolerance=length_tolerance, progress=wrap,
                                     on_pair=lambda row: f.write(dumps(row) + "\n"))
            if results["num_pairs"] == 0:  # raised inside the block: no output file is written
                bad = results["bad_rows"]
                if not bad["count"]:
                    raise InputError("no rows: the file is empty", file=pairs)
                raise InputError(f"no valid pairs: all {bad['count']} rows are bad; first: "
                                 + "; ".join(bad["examples"][:3]), file=pairs)
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
    # Not given: each backend keeps its own default; the remote ones (vllm:, sglang:, openrlhf:, thinkrm:) wait
    # request_timeout() seconds, the one --timeout default of every command (tests/test_cli_flags.py).
    timeout_opt = typer.Option(None, help="Remote scorers: seconds to wait for an answer.",
                               show_default=f"{request_timeout()}")
    retries_opt = typer.Option(None, min=0, help="Remote scorers: retries on connection errors, 429 and 5xx.")
    key_opt = typer.Option(None, "--api-key", help="Remote scorers: bearer token (thinkrm:URL also reads "
                           "$THINKRM_API_KEY; other servers get a key only when it is given here).")

    @app.command("score")
    def score_cmd(
        traces: Path = typer.Argument(..., help="Traces (JSONL or JSON list): prompt + reasoning/response."),
        scorer: str = scorer_option(),
        out: Path = out_option(help="Output JSONL: every input row plus `score`."),
        resume: bool = typer.Option(False, "--resume", help="Keep rows already in the output."),
        skip_bad: bool = typer.Option(False, "--skip-bad", help="Report and skip malformed rows."),
        batch_size: Optional[int] = batch_opt, device: Optional[str] = device_opt,
        dtype: Optional[str] = dtype_opt, timeout: Optional[float] = timeout_opt,
        retries: Optional[int] = retries_opt, api_key: Optional[str] = key_opt,
    ) -> None:
        """Add a reward score to every trace (streaming, resumable with --resume).

        A bad row, or one the scorer fails on, stops the run with its file:line (earlier rows are kept).
        With --skip-bad such rows are reported and skipped. An input without rows is an error.
        The output must be a regular file (or absent), and not the input under any name.
        """
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
        scorer: str = scorer_option(),
        out: Path = out_option(help="Output directory: results.json, outputs.jsonl."),
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

    @app.command("calibrate")
    def calibrate_cmd(
        traces: Path = typer.Argument(..., help="Correct traces, or candidates with a `correct` field "
                                      "(only correct rows are used)."),
        scorer: str = scorer_option(),
        out: Optional[Path] = out_option(None, help="Write {\"calibration\": ...} to this JSON file (pass it "
                                         "as calibration=FILE or $THINKRM_CALIBRATION)."),
        limit: Optional[int] = typer.Option(None, min=4, help="Use at most this many traces."),
        batch_size: Optional[int] = batch_opt, device: Optional[str] = device_opt,
        dtype: Optional[str] = dtype_opt, timeout: Optional[float] = timeout_opt,
        retries: Optional[int] = retries_opt, api_key: Optional[str] = key_opt,
    ) -> None:
        """Measure a scorer's calibration (centre, scale) on correct traces, for the gated RL reward."""
        from ..calibration import calibrate_traces
        from ..io import check_output_file, write_json
        from ..scoring import load_scorer

        with user_errors():
            if out is not None:  # checked before the scoring, not after it
                check_output_file(out, inputs=[traces])
            loaded = load_scorer(scorer, **scorer_options(batch_size, device, dtype, timeout, retries, api_key))
            cal = calibrate_traces(traces, loaded, limit=limit)
            if out is not None:
                write_json(out, {"calibration": cal.to_dict()})
        console.print(f"centre {cal.center:.6g}, scale {cal.scale:.6g} from {cal.n} traces; use "
                      f"calibration=\"{cal.center:.6g},{cal.scale:.6g}\""
                      + (f" or calibration={out}" if out is not None else ""), highlight=False)

