"""Shared CLI plumbing: user errors as one red line (never a traceback), rich progress bars."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..io import InputError

console = Console(stderr=True)
T = TypeVar("T")


def fail(message: str, code: int = 2) -> None:
    # soft_wrap: a piped or captured stderr is 80 columns to rich, and a long path must not break the line.
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn expected failures (bad input, unreachable server, bad spec, a path the system refuses: no
    permission, disk full, name too long) into a one-line message + exit 2."""
    try:
        yield
    except (InputError, ValueError) as e:
        fail(str(e))
    except OSError as e:  # ConnectionError and TimeoutError carry their own message; a path error its name
        fail(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e))


def progress(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a rich progress bar on stderr (hidden when stderr is not a terminal-like console)."""
    cols = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    if total is not None:
        cols.append(TimeRemainingColumn())
    with Progress(*cols, console=console, transient=False, disable=not console.is_terminal) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)


def count_lines(path) -> int | None:
    """Non-blank lines of a JSONL file, for the progress bar's total (None for a JSON list)."""
    with open(path, "rb") as f:
        if f.read(4096).lstrip().startswith(b"["):
            return None
        f.seek(0)
        return sum(1 for line in f if line.strip())
