"""`thinkrm train`: Bradley-Terry reward-model training (`--arch lm`, default) or the embedded lite model.

The flags are generated from `thinkrm.train.TrainConfig`, so the CLI and the Python API cannot drift apart.
Every flag defaults to "not given": only flags the user typed override the preset (or the config defaults).
"""

from __future__ import annotations

import inspect
import os
import types
import typing
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Optional

import typer

from .common import console, progress, user_errors

# Flags that are not plain TrainConfig fields: the positional pairs file and the -o short name.
_SPECIAL = ("pairs", "output_dir")


def _config_parameters() -> list[inspect.Parameter]:
    from ..train import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    params = []
    for f in fields(TrainConfig):
        if f.name in _SPECIAL:
            continue
        typ = hints[f.name]
        if isinstance(typ, types.UnionType) or typing.get_origin(typ) is typing.Union:
            typ = next(a for a in typing.get_args(typ) if a is not type(None))
        flag = "--" + f.name.replace("_", "-")
        decl = f"{flag}/--no-{f.name.replace('_', '-')}" if typ is bool else flag
        default = f.default if f.default is not MISSING else None
        shown = f" (default: {'on' if default else 'off'})" if typ is bool else (
            f" (default: {default})" if default not in (None, "") else "")
        option = typer.Option(None, decl, help=f.metadata.get("help", "") + shown, show_default=False)
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                        annotation=Optional[typ]))
    return params


def _run(pairs: Optional[Path], output_dir: Path, arch: str, shared: Optional[Path], **options: Any) -> None:
    given = {k: v for k, v in options.items() if v is not None}
    with user_errors():
        if arch == "lite":
            _run_lite(pairs, output_dir, shared, given)
            return
        if arch != "lm":
            raise ValueError(f"--arch {arch!r}: expected 'lm' (a language-model backbone) or 'lite'")
        if shared is not None:
            raise ValueError("--shared is only used with --arch lite")
        if pairs is None:
            raise ValueError("missing PAIRS: the preference pairs file to train on")
        from ..train import TrainConfig, train

        preset = given.pop("preset", None)
        overrides = dict(given, pairs=str(pairs), output_dir=str(output_dir))
        config = TrainConfig.from_preset(preset, **overrides) if preset else TrainConfig(**overrides)
        report = train(config)
    # Under `accelerate launch` every process returns; one summary is enough.
    if os.environ.get("RANK", "0") == "0":
        _print_report(report)


def _run_lite(pairs: Optional[Path], output_dir: Path, shared: Optional[Path], given: dict[str, Any]) -> None:
    """The lite model trains its own way; only the pairs, output, shared data and seed carry over."""
    unsupported = sorted(k for k in given if k != "seed")
    if unsupported:
        flags = ", ".join("--" + k.replace("_", "-") for k in unsupported)
        raise ValueError(f"--arch lite does not take {flags}")
    try:
        from ..lite import train_lite
    except ImportError as e:
        raise ValueError(f"--arch lite is not available in this build of thinkrm ({e})") from None
    train_lite(str(pairs) if pairs is not None else None, str(output_dir),
               str(shared) if shared is not None else None, given.get("seed", 0), progress=progress)
    console.print(f"[green]lite model written to[/] {output_dir}")


def _print_report(report) -> None:
    console.print(f"[green]trained[/] {report.steps} steps on {report.pairs_used} pairs "
                  f"({report.eval_pairs} held out) -> {report.output_dir}")
    curve = "" if report.first_loss is None else f"loss {report.first_loss:.4f} -> {report.last_loss:.4f}, "
    console.print(f"{curve}mean loss {report.train_loss:.4f}; {report.tokens_per_second:,.0f} tokens/s")
    if report.eval_accuracy is not None:
        console.print(f"eval pairwise accuracy {report.eval_accuracy:.3f} (step {report.best_step})")
    if report.calibration is not None:
        cal = report.calibration
        console.print(f"calibration: center {cal['center']:.4g}, scale {cal['scale']:.4g} ({cal['reference']})",
                      highlight=False)
    else:
        console.print(f"[yellow]not calibrated:[/] {report.calibration_skipped}", highlight=False)
    if report.truncated_sides:
        console.print(f"[yellow]{report.truncated_sides} sides truncated to max length[/] "
                      "(prompt kept, end of reasoning kept)")
    if report.bad_pairs:
        console.print(f"[yellow]{report.bad_total} bad pairs skipped:[/]")
        for what, n in sorted(report.bad_pairs.items(), key=lambda kv: -kv[1]):
            console.print(f"  {n:6d}  {what}", highlight=False)
        console.print(f"  first: {report.bad_examples[0]}", highlight=False)


def _command():
    def command(**kwargs: Any) -> None:
        """Train a thinking reward model (Bradley-Terry loss via TRL's RewardTrainer) on preference pairs.

        Writes a plain one-label sequence-classification checkpoint that transformers, vLLM, SGLang and
        `--scorer hf:DIR` load unchanged, with thinkrm.json and train_report.json beside it.
        """
        _run(**kwargs)

    kw = inspect.Parameter.KEYWORD_ONLY
    pairs_help = "Preference pairs: JSONL/JSON with prompt, chosen, rejected (strings or messages), margin."
    arch_help = "'lm': a transformers backbone; 'lite': the embedded CPU model (thinkrm.lite)."
    head = [
        inspect.Parameter("pairs", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Optional[Path],
                          default=typer.Argument(None, help=pairs_help, show_default=False)),
        inspect.Parameter("output_dir", kw, annotation=Path,
                          default=typer.Option(..., "-o", "--output-dir", help="Output directory.")),
        inspect.Parameter("arch", kw, annotation=str, default=typer.Option("lm", "--arch", help=arch_help)),
        inspect.Parameter("shared", kw, annotation=Optional[Path],
                          default=typer.Option(None, "--shared", help="Shared data folder (--arch lite).")),
    ]
    command.__signature__ = inspect.Signature(head + _config_parameters())
    command.__annotations__ = {}
    return command


def register(app: typer.Typer) -> None:
    app.command("train")(_command())


def main(argv: list[str] | None = None) -> None:
    """`python -m thinkrm.cli.train` (what `accelerate launch` and `torchrun` run on every rank): the flags of
    `thinkrm train` as a one-command program, without the other commands' imports."""
    app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)
    app.command()(_command())
    app(args=argv)


if __name__ == "__main__":
    main()
