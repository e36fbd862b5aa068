"""`thinkrm train` (Bradley-Terry reward-model training) and `thinkrm train-lite` (the embedded lite model).

The flags are generated from `thinkrm.train.TrainConfig`, so the CLI and the Python API cannot drift apart.
Every flag defaults to "not given": only flags the user typed override the preset (or the config defaults).
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import typer

from .common import config_help, console, dataclass_parameters, out_option, progress, user_errors

# TrainConfig fields that are not `--field` flags: the positional pairs file and the output (-o/--out).
_SPECIAL = ("pairs", "output_dir")
PAIRS_HELP = "Preference pairs: JSONL/JSON with prompt, chosen, rejected (strings or messages), margin."
LITE_PAIRS_HELP = ("Your own preference pairs (10% held out); without it, the recipe's pools from --shared "
                   "(docs/trm-lite.md).")


@dataclass
class LiteTrainOptions:
    """`thinkrm train-lite`'s flags: the arguments of `thinkrm.lite.train_lite` (tests/test_cli_flags.py checks
    these defaults against its signature)."""

    shared: Optional[str] = field(default=None, metadata={"help": "Shared data folder (../shared/data): the "
                                                          "recipe's training pools and the held-out problems."})
    seed: int = field(default=0, metadata={"help": "Seeds the split, the heads and the data order."})
    epochs: int = field(default=40, metadata={"help": "Passes over the training pairs."})
    cache_dir: Optional[str] = field(default=None, metadata={"help": "Embedding cache (default: "
                                     "$THINKRM_LITE_CACHE, else ~/.cache/thinkrm/lite)."})


# The flags `thinkrm train --arch lite` still takes (the older spelling of `thinkrm train-lite`).
_LITE_VIA_TRAIN = ("seed",)


def _run(pairs: Optional[Path], out: Path, arch: str, shared: Optional[Path], **options: Any) -> None:
    given = {k: v for k, v in options.items() if v is not None}
    with user_errors():
        if arch == "lite":
            unsupported = sorted(k for k in given if k not in _LITE_VIA_TRAIN)
            if unsupported:
                flags = ", ".join("--" + k.replace("_", "-") for k in unsupported)
                raise ValueError(f"--arch lite does not take {flags} (TRM-lite's flags: `thinkrm train-lite "
                                 "--help`)")
            _run_lite(pairs, out, str(shared) if shared is not None else None, seed=given.get("seed", 0))
            return
        if arch != "lm":
            raise ValueError(f"--arch {arch!r}: expected 'lm' (a language-model backbone) or 'lite'")
        if shared is not None:
            raise ValueError("--shared is only used with --arch lite (or `thinkrm train-lite`)")
        if pairs is None:
            raise ValueError("missing PAIRS: the preference pairs file to train on")
        from ..train import TrainConfig, train

        preset = given.pop("preset", None)
        overrides = dict(given, pairs=str(pairs), output_dir=str(out))
        config = TrainConfig.from_preset(preset, **overrides) if preset else TrainConfig(**overrides)
        report = train(config)
    # Under `accelerate launch` every process returns; one summary is enough.
    if os.environ.get("RANK", "0") == "0":
        _print_report(report)


def _run_lite(pairs: Optional[Path], out: Path, shared: Optional[str], seed: int = 0,
              epochs: int = LiteTrainOptions.epochs, cache_dir: Optional[str] = None) -> None:
    """The lite model trains its own way (`thinkrm.lite.train_lite`)."""
    try:
        from ..lite import train_lite
    except ImportError as e:
        raise ValueError(f"TRM-lite training is not available in this build of thinkrm ({e})") from None
    train_lite(str(pairs) if pairs is not None else None, str(out), shared, seed, epochs=epochs,
               cache_dir=cache_dir, progress=progress)
    console.print(f"[green]lite model written to[/] {out}")


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
        `--arch lite` is the older spelling of `thinkrm train-lite` (it takes --shared and --seed only).
        """
        _run(**kwargs)

    from ..train import TrainConfig

    kw = inspect.Parameter.KEYWORD_ONLY
    arch_help = "'lm': a transformers backbone; 'lite': the embedded CPU model (= `thinkrm train-lite`)."
    head = [
        inspect.Parameter("pairs", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Optional[Path],
                          default=typer.Argument(None, help=PAIRS_HELP, show_default=False)),
        inspect.Parameter("out", kw, annotation=Path,
                          default=out_option(help=config_help(TrainConfig, "output_dir"))),
        inspect.Parameter("arch", kw, annotation=str, default=typer.Option("lm", "--arch", help=arch_help)),
        inspect.Parameter("shared", kw, annotation=Optional[Path],
                          default=typer.Option(None, "--shared", help="Shared data folder (--arch lite).")),
    ]
    # Every flag defaults to "not given", so only what the user typed overrides the preset.
    command.__signature__ = inspect.Signature(head + dataclass_parameters(TrainConfig, skip=_SPECIAL,
                                                                          not_given=True))
    command.__annotations__ = {}
    return command


def _lite_command():
    def train_lite_cmd(**kwargs: Any) -> None:
        """Train TRM-lite, the embedded CPU reward model (docs/trm-lite.md; `make lite-model`).

        Without PAIRS it trains on the recipe's pools in --shared; it writes the weights, split.json and
        MODEL_CARD.md to -o DIR (load it with --scorer lite:DIR).
        """
        pairs, out = kwargs.pop("pairs"), kwargs.pop("out")
        with user_errors():
            _run_lite(pairs, out, **kwargs)

    head = [
        inspect.Parameter("pairs", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Optional[Path],
                          default=typer.Argument(None, help=LITE_PAIRS_HELP, show_default=False)),
        inspect.Parameter("out", inspect.Parameter.KEYWORD_ONLY, annotation=Path,
                          default=out_option(help="Output directory of the TRM-lite checkpoint.")),
    ]
    train_lite_cmd.__signature__ = inspect.Signature(head + dataclass_parameters(LiteTrainOptions))
    train_lite_cmd.__annotations__ = {}
    return train_lite_cmd


def register(app: typer.Typer) -> None:
    app.command("train")(_command())
    app.command("train-lite")(_lite_command())


def main(argv: list[str] | None = None) -> None:
    """`python -m thinkrm.cli.train` (what `accelerate launch` and `torchrun` run on every rank): the flags of
    `thinkrm train` as a one-command program, without the other commands' imports."""
    app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)
    app.command()(_command())
    app(args=argv)


if __name__ == "__main__":
    main()
