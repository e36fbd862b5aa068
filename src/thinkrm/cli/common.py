"""Shared CLI plumbing: user errors as one red line (never a traceback), rich progress bars, and the one flag
convention (`-o/--out`, `--scorer`, `--timeout`, flags generated from config dataclasses)."""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Optional, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

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


# ------------------------------------------------------------------------------------------ one flag convention
# Every command spells a shared option the same way, with the same default and help:
#   -o/--out       every output file or directory;
#   --scorer/-s    a scorer spec, default `lite`, help SCORER_HELP;
#   --timeout      seconds per request to a server (LLM or remote scorer), default request_timeout().
# Commands with a config dataclass build their flags from it (`dataclass_parameters`): defaults and help text
# live in the dataclass (`field(metadata={"help": ...})`), so the CLI and the Python API cannot drift apart.
# tests/test_cli_flags.py walks every command and checks all of this.

OUT_DECLS = ("-o", "--out")
SCORER_DECLS = ("--scorer", "-s")
DEFAULT_SCORER = "lite"
SCORER_HELP = ("Scorer spec: lite (the embedded TRM-lite), lite:DIR, hf:DIR, vllm:URL, sglang:URL, openrlhf:URL, "
               "thinkrm:URL, length, random[:SEED] (thinkrm.load_scorer); `analyze` also takes none (no scores).")


def out_option(default: Any = ..., help: str = "Output path.") -> Any:
    """The one output option, `-o/--out`."""
    return typer.Option(default, *OUT_DECLS, help=help)


def scorer_option(default: str = DEFAULT_SCORER) -> Any:
    """The one scorer option, `--scorer/-s`, with the same help everywhere."""
    return typer.Option(default, *SCORER_DECLS, help=SCORER_HELP)


def request_timeout() -> float:
    """The one default of `--timeout` (seconds per LLM / remote-scorer request): `LLMConfig.timeout`."""
    from ..llm.client import LLMConfig

    return config_default(LLMConfig, "timeout")


def config_field(cls: type, name: str) -> dataclasses.Field:
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def config_default(cls: type, name: str) -> Any:
    """A dataclass field's default (calling its default_factory; None when it has neither)."""
    f = config_field(cls, name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def config_help(cls: type, name: str) -> str:
    return config_field(cls, name).metadata.get("help", "")


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def dataclass_parameters(cls: type, *, skip: Iterable[str] = (), rename: dict[str, str] | None = None,
                         options: dict[str, dict[str, Any]] | None = None, not_given: bool = False,
                         panel: str | None = None) -> list[inspect.Parameter]:
    """Keyword-only typer parameters, one per field of the dataclass `cls`.

    Flag `--field-name` (`--x/--no-x` for a bool), the field's type, default and `metadata["help"]`.
    `rename` maps a field to another parameter name (and flag), for two configs in one command;
    `options[field]` adds or replaces typer.Option arguments (`param_decls` replaces the flag names).
    `not_given`: every flag defaults to None ("not given", so a preset can fill it in) and shows the
    field's default as `show_default`, which is what help prints and tests/test_cli_flags.py compares.
    """
    rename, options, skip = rename or {}, options or {}, set(skip)
    hints = typing.get_type_hints(cls)
    params = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        name = rename.get(f.name, f.name)
        typ = hints[f.name]
        optional = isinstance(typ, types.UnionType) or typing.get_origin(typ) is typing.Union
        if optional:
            typ = next(a for a in typing.get_args(typ) if a is not type(None))
        flag = flag_name(name)
        kw: dict[str, Any] = {"help": f.metadata.get("help", ""), "param_decls":
                              [f"{flag}/--no-{flag[2:]}" if typ is bool else flag]}
        default = config_default(cls, f.name)
        if not_given:
            kw["show_default"] = ("on" if default else "off") if typ is bool else (
                str(default) if default not in (None, "") else False)
            default, optional = None, True
        if panel is not None:
            kw["rich_help_panel"] = panel
        kw.update(options.get(f.name, {}))
        decls = kw.pop("param_decls")
        option = typer.Option(kw.pop("default", default), *decls, **kw)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                        annotation=Optional[typ] if optional else typ))
    return params


def config_values(cls: type, values: dict[str, Any], *, rename: dict[str, str] | None = None) -> dict[str, Any]:
    """The fields of `cls` among a command's `values` (parameter names mapped back through `rename`)."""
    rename = rename or {}
    return {f.name: values[rename.get(f.name, f.name)] for f in dataclasses.fields(cls)
            if rename.get(f.name, f.name) in values}


def command_with(func: Callable[..., None], params: list[inspect.Parameter]) -> Callable[..., None]:
    """`func(**values)` as a typer command whose parameters are `params` (typer reads `__signature__`)."""
    def command(**values: Any) -> None:
        func(**values)

    command.__doc__, command.__name__ = func.__doc__, func.__name__
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {}
    return command
