"""The `thinkrm` command line: a thin typer layer over the Python API.

Each pipeline stage registers its commands from its own module here, so the CLI reads like the package:
analyze/delimiters (trace -> steps -> dag -> me2), score/eval-pairs/train (reward models), perturb
(TRM-lite data), judge/build-pairs (LLM pipeline), serve, bon. Command modules import heavy libraries only
inside the command functions, so `thinkrm --help` stays fast.
"""

from __future__ import annotations

from typing import Any


def _build_app() -> Any:
    import typer

    from . import analyze, bon, delimiters, llm, perturb, score, serve, train

    app = typer.Typer(name="thinkrm", no_args_is_help=True, add_completion=False,
                      pretty_exceptions_show_locals=False, help="Measure and improve how language models reason.")
    for module in (analyze, delimiters, score, train, perturb, llm, serve, bon):
        module.register(app)
    return app


def __getattr__(name: str) -> Any:
    # `app` is built on first use: `python -m thinkrm.cli.train` (what every rank of `accelerate launch`
    # runs) imports this package too, and must not pay for every command module (`serve` registers its flags
    # from thinkrm.serving.config).
    if name == "app":
        globals()["app"] = app = _build_app()
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    from . import app

    app()
