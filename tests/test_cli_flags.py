"""One flag convention across every `thinkrm` command (thinkrm.cli.common).

Walks the click object of the whole CLI: every output option is `-o/--out`, every `--timeout` has the same
default, every `--scorer` the same help, and an option name means one default everywhere.
"""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import typer
from typer.testing import CliRunner

# Options that share a name across commands but are different things, so their defaults differ on purpose.
# Keep this list short: a new entry needs a reason, else rename the option or unify its default.
DIFFERENT_MEANINGS = {
    # score/eval-pairs/calibrate: items per scorer call (not given = each backend's own); train: pairs per
    # optimizer step.
    "--batch-size",
    # score/eval-pairs/calibrate: the hf scorer's load dtype (not given = auto); train: the training dtype.
    "--dtype",
    # bon: softmax temperature of weighted-vote ("auto"); judge/build-pairs: the judge's sampling temperature.
    "--temperature",
    # bon: random subsets of N per problem; judge/build-pairs: judge votes per presentation order.
    "--repeats",
}
# Names of the parameters that hold an output path or directory.
OUTPUT_NAMES = {"out", "output", "output_dir", "out_dir", "outdir"}


def _commands() -> dict:
    from thinkrm.cli import app

    # typer carries its own copy of click (typer._click): duck-typed, not isinstance(click.Group).
    def walk(cmd, prefix: str) -> dict:
        if hasattr(cmd, "commands"):
            found: dict = {}
            for name, sub in cmd.commands.items():
                found.update(walk(sub, f"{prefix} {name}".strip()))
            return found
        return {prefix: cmd}

    return walk(typer.main.get_command(app), "")


COMMANDS = _commands()


def _options(cmd) -> list:
    return [p for p in cmd.params if p.param_type_name == "option" and p.name != "help"]


def _default(opt) -> str:
    """What the option means when not given: its default, or for a "not given" flag (train's, which leaves the
    value to a preset or a backend) the default it shows (`show_default="..."`)."""
    value = opt.default
    if value is None and isinstance(opt.show_default, str):
        value = opt.show_default
    return _shown(value)


def _shown(value) -> str:
    if isinstance(value, bool):
        value = "on" if value else "off"
    return str(value)


def test_the_walk_sees_every_command():
    assert {"analyze", "score", "eval-pairs", "calibrate", "train", "train-lite", "perturb", "judge",
            "build-pairs", "serve", "bon", "delimiters mine"} <= set(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_output_option_is_dash_o_dash_dash_out(name):
    cmd = COMMANDS[name]
    for opt in _options(cmd):
        names = set(opt.opts) | set(opt.secondary_opts)
        if opt.name in OUTPUT_NAMES or "-o" in names or any(n.startswith("--output") for n in names):
            assert sorted(opt.opts) == ["--out", "-o"] and not opt.secondary_opts, (name, opt.opts)
            assert opt.name == "out", (name, opt.name)


def test_every_timeout_has_the_same_default():
    from thinkrm.cli.common import request_timeout
    from thinkrm.llm.client import LLMConfig
    from thinkrm.remote import RemoteScorer

    found = {name: _default(opt) for name, cmd in COMMANDS.items() for opt in _options(cmd)
             if "--timeout" in opt.opts}
    assert {"judge", "build-pairs", "score", "eval-pairs", "calibrate"} <= set(found)
    assert set(found.values()) == {str(request_timeout())}, found
    # The one default is LLMConfig's, and the remote scorers (score's --timeout when not given) agree with it.
    assert request_timeout() == LLMConfig().timeout
    assert inspect.signature(RemoteScorer.__init__).parameters["timeout"].default == request_timeout()


def test_every_scorer_option_is_the_same():
    from thinkrm.cli.common import DEFAULT_SCORER, SCORER_HELP

    found = {name: opt for name, cmd in COMMANDS.items() for opt in _options(cmd) if "--scorer" in opt.opts}
    assert {"analyze", "score", "eval-pairs", "calibrate", "bon", "serve"} <= set(found)
    for name, opt in found.items():
        assert opt.help == SCORER_HELP, name
        assert sorted(opt.opts) == ["--scorer", "-s"], name
        assert opt.default == DEFAULT_SCORER, name


def test_one_option_name_one_default():
    seen: dict[str, dict[str, list[str]]] = {}
    for name, cmd in COMMANDS.items():
        for opt in _options(cmd):
            for flag in opt.opts:
                if flag.startswith("--"):
                    seen.setdefault(flag, {}).setdefault(_default(opt), []).append(name)
    clashes = {flag: by_default for flag, by_default in seen.items()
               if len(by_default) > 1 and flag not in DIFFERENT_MEANINGS}
    assert not clashes, clashes
    for flag in DIFFERENT_MEANINGS:  # a stale exception hides nothing: drop it
        assert len(seen.get(flag, {})) > 1, f"{flag} no longer needs an exception"


@pytest.mark.parametrize(
    "cls_path, command, skip, rename",
    [
        ("thinkrm.train:TrainConfig", "train", {"pairs", "output_dir"}, {}),
        ("thinkrm.serving.config:ServeConfig", "serve", set(), {}),
        ("thinkrm.llm.judge:JudgeConfig", "judge", set(), {}),
        ("thinkrm.llm.judge:JudgeConfig", "build-pairs", set(), {}),
        ("thinkrm.llm.build_pairs:BuildConfig", "build-pairs", {"generators", "judge"},
         {"temperature": "--gen-temperature", "top_p": "--gen-top-p", "max_tokens": "--gen-max-tokens",
          "n": "-n", "k": "-k"}),
        ("thinkrm.cli.train:LiteTrainOptions", "train-lite", set(), {}),
    ],
)
def test_config_dataclasses_are_the_source_of_flags(cls_path, command, skip, rename):
    # Each field is a flag of its command, with the field's default and help (no hand-copied defaults).
    import importlib

    module, _, name = cls_path.partition(":")
    cls = getattr(importlib.import_module(module), name)
    by_flag = {flag: opt for opt in _options(COMMANDS[command]) for flag in opt.opts}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = rename.get(f.name, "--" + f.name.replace("_", "-"))
        assert flag in by_flag, (command, flag)
        opt = by_flag[flag]
        default = f.default if f.default is not dataclasses.MISSING else None
        assert _default(opt) == _shown(default) or (
            opt.default is None and opt.show_default is False and default in (None, "")), (command, flag)
        if f.name != "scorer":  # --scorer's help is the shared SCORER_HELP
            assert f.metadata.get("help") and opt.help == f.metadata["help"], (command, flag)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_help_works(name):
    from thinkrm.cli import app

    result = CliRunner().invoke(app, [*name.split(), "--help"])
    assert result.exit_code == 0, result.output
