"""`thinkrm perturb`: correct traces -> ME² preference pairs (original preferred over a flawed copy)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import typer

from .common import console, out_option, progress, user_errors


def run_perturb(candidates: str | Path, out: str | Path, *, ops: str | None = None, seed: int = 0,
                skip_bad: bool = False, show_progress: bool = True) -> Counter:
    """Write the pairs atomically (never a half-written file); returns the number of pairs per op.

    The output may not be the input under any name (it would be replaced by the pairs); an empty input is
    an error.
    """
    from ..io import InputError, check_output_file, write_jsonl
    from ..perturb import parse_ops, perturb_records
    from ..trace import load_traces

    op_names = parse_ops(ops)
    check_output_file(out, inputs=[candidates])
    skipped: list[InputError] = []
    traces = load_traces(candidates, skip_bad=skip_bad, on_bad=skipped.append, allow_empty=False)
    if show_progress:
        traces = progress(traces, "perturbing")
    counts: Counter = Counter()

    def counted():
        for rec in perturb_records(traces, op_names, seed=seed):
            counts[rec["kind"]] += 1
            yield rec

    write_jsonl(out, counted())
    for e in skipped:
        console.print(f"[yellow]skipped[/] {e}", highlight=False)
    return counts


def register(app: typer.Typer) -> None:
    @app.command("perturb")
    def perturb_cmd(
        candidates: Path = typer.Argument(..., help="JSONL of traces (prompt + response or reasoning); rows "
                                          "with `correct: false` are skipped."),
        out: Path = out_option(help="Where to write the TRL-style pairs (JSONL)."),
        ops: str = typer.Option(None, "--ops", help="Comma-separated operations (default: all): restart, "
                                "detour, duplicate_check, filler, wrong_then_fixed, drop_justification."),
        seed: int = typer.Option(0, "--seed", help="Same seed + same input = same pairs."),
        skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip malformed rows instead of stopping."),
    ) -> None:
        """Make a flawed copy of each correct trace per ME² operation; the original is `chosen`.

        Each pair records the op, the ME² dimension it breaks and the exact `edit` (start, inserted,
        removed) that turns `chosen` into `rejected`; the final answer is never touched.
        """
        with user_errors():
            counts = run_perturb(candidates, out, ops=ops, seed=seed, skip_bad=skip_bad)
        total = sum(counts.values())
        detail = ", ".join(f"{op} {n}" for op, n in sorted(counts.items()))
        console.print(f"wrote {total} pairs to {out}" + (f" ({detail})" if detail else ""), highlight=False)
