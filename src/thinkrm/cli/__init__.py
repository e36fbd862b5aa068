"""The `thinkrm` command line: a thin typer layer over the Python API.

Each pipeline stage registers its commands from its own module here, so the CLI reads like the package:
analyze/delimiters (trace -> steps -> dag -> me2), score/eval-pairs/train (reward models), perturb
(TRM-lite data), judge/build-pairs (LLM pipeline), serve, bon. Command modules import heavy libraries only
inside the command functions, so `thinkrm --help` stays fast.
"""

from __future__ import annotations

import typer

from . import analyze, bon, delimiters, llm, perturb, score, serve, train

app = typer.Typer(name="thinkrm", no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False,
                  help="Measure and improve how language models reason.")

for _module in (analyze, delimiters, score, train, perturb, llm, serve, bon):
    _module.register(app)


def main() -> None:
    app()
