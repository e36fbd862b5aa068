"""`thinkrm bon`: Best-of-N accuracy of a scorer on a candidate pool, with baselines, a plot and a table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from .common import console, out_option, scorer_option, user_errors


def _parse_list(text: str, name: str, cast=str) -> list:
    try:
        items = [cast(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--{name}: expected a comma-separated list, got {text!r}") from None
    if not items:
        raise ValueError(f"--{name}: empty list")
    return items


def table(result: dict[str, Any]):
    from rich.table import Table

    t = Table(title=f"Best-of-N accuracy (%), scorer {result['scorer']}, 95% CI over problems")
    t.add_column("method")
    for n in result["ns"]:
        t.add_column(f"N={n}", justify="right")
    rows = [*result["strategies"].items(), *result["baselines"].items()]
    for i, (name, stats) in enumerate(rows):
        cells = []
        for n in result["ns"]:
            st = stats[str(n)]
            cells.append(f"{st['mean'] * 100:.1f} ±{(st['ci_high'] - st['mean']) * 100:.1f}")
        t.add_row(name, *cells, end_section=i == len(result["strategies"]) - 1)
    return t


def register(app: typer.Typer) -> None:
    @app.command("bon")
    def bon_cmd(
        candidates: Path = typer.Argument(..., help="Candidates JSONL: problem_id, prompt, response, "
                                          "correct and/or gold."),
        scorer: str = scorer_option(),
        out: Path = out_option(help="Output directory (bon.json, bon.png, score cache)."),
        n: str = typer.Option("1,2,4,8,16", "--n",
                              help="Values of N, comma-separated (capped at the pool size)."),
        repeats: int = typer.Option(5, help="Random subsets of N per problem to average over."),
        strategies: str = typer.Option("argmax,vote,weighted-vote", help="Selection rules, comma-separated."),
        temperature: str = typer.Option("auto", help="Softmax temperature of weighted-vote: a number, or "
                                        "'auto' (thinkrm.bon.AUTO_TEMPERATURE = 4 standard deviations of all "
                                        "scores: the scores settle ties and near-ties of the vote)."),
        seed: int = typer.Option(0, help="Seed of the random subsets."),
        verifier: str = typer.Option("math", help="Answer checker for rows without `correct`: math, choice, "
                                     "llm:URL[,URL...] (docs/bon-and-rl.md, Verifiers)."),
        verify_timeout: float = typer.Option(5.0, help="Seconds per answer check (llm: per request) before "
                                             "it counts as wrong."),
        # --verify-workers as in build-pairs; --workers is its older spelling (still used by tests/test_scoring.py).
        verify_workers: int | None = typer.Option(None, "--verify-workers", "--workers",
                                                  help="Verifier processes (default: min(4, CPUs))."),
    ) -> None:
        """Best-of-N selection by a thinking reward model vs random, shortest, longest, oracle, majority vote.

        Example: thinkrm bon ../shared/data/gsm8k-candidates/dev.jsonl --scorer lite -o out/bon-gsm8k
        Scores are cached in OUTDIR, so a rerun (or a killed run) only scores what is missing.
        """
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from ..bon import best_of_n, load_candidates, plot_bon
        from ..io import check_output_dir, check_output_file, write_json

        with user_errors():
            check_output_dir(out)
            for name in ("bon.json", "bon.png"):
                check_output_file(out / name, inputs=[candidates])
            ns = _parse_list(n, "n", int)
            if temperature != "auto":
                try:
                    temperature = float(temperature)
                except ValueError:
                    raise ValueError(f"--temperature: expected a number or 'auto', "
                                     f"got {temperature!r}") from None
            rules = _parse_list(strategies, "strategies")
            cands = load_candidates(candidates)
            with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeRemainingColumn(), console=console, disable=not console.is_terminal) as bar:
                task = bar.add_task("scoring", total=None)

                def on_progress(stage: str, done: int, total: int) -> None:
                    bar.update(task, description=stage, completed=done, total=total)

                result = best_of_n(cands, scorer, strategies=rules, ns=ns, repeats=repeats, seed=seed,
                                   temperature=temperature, cache_dir=out, verify_timeout=verify_timeout,
                                   workers=verify_workers, verifier=verifier, on_progress=on_progress)
            result["input"] = str(candidates)
            write_json(out / "bon.json", result)
            plot_bon(result, out / "bon.png")
        Console().print(table(result))  # the table is the result: stdout, unlike progress and messages
        sc = result["timings"]["scoring"]
        console.print(f"scored {sc['scored']} candidates in {sc['seconds']:.1f}s ({sc['cached']} cached); "
                      f"wrote {out / 'bon.json'} and {out / 'bon.png'}", highlight=False)
