"""The RL launch configs and the commands in the docs, checked against the installed frameworks' own schemas.

verl 0.9 (`python -m verl.trainer.main_ppo`) composes `verl/trainer/config/ppo_trainer.yaml` with Hydra. The
schema is rebuilt here from those YAML files with PyYAML alone, following Hydra's defaults-list rules (config
groups, `group@package` targets relative to the parent's package, `../` group paths, `# @package _global_`,
`${group}` choices in option names, `_self_` order, `_self_` last when omitted); the result is checked
against verl's own flattened dump (`_generated_ppo_trainer.yaml`) and, when hydra-core is installed, against
Hydra's composition, so the rebuild cannot drift silently. Override rules are Hydra's: `key=v` needs an
existing key, `+key=v` a new one. Since `+` would accept a misspelt new key without complaint, new keys are
only allowed under `reward.custom_reward_function.reward_kwargs` (whose names must then be parameters of
`thinkrm.verl_reward.compute_score`, which also rejects unknown ones itself) and Ray's `env_vars`. With
hydra-core installed every command is also composed by Hydra itself, which fails on an unknown key exactly as
`main_ppo` does.

OpenRLHF 0.11's flags are collected from `openrlhf/cli/train_ppo_ray.py` by parsing its `add_argument` calls
(importing it needs ray and torch): every flag we use must exist, get as many values as it takes, and a value
from its `choices`.

Package locations come from `importlib.metadata`, so this runs in any environment that has verl / openrlhf
installed (even with `--no-deps`); without them the tests are skipped.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import inspect
import itertools
import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
VERL_CONFIGS = ROOT / "configs" / "verl"
OPENRLHF_SCRIPT = ROOT / "configs" / "openrlhf" / "train_grpo_thinkrm.sh"
DOCS = [ROOT / "docs" / "bon-and-rl.md", ROOT / "docs" / "serving.md", ROOT / "README.md"]

# Where Hydra's `+key=value` may add keys that verl's schema does not declare, and verl reads them.
REWARD_KWARGS = "reward.custom_reward_function.reward_kwargs"
VERL_OPEN_NAMESPACES = (REWARD_KWARGS, "ray_kwargs.ray_init.runtime_env.env_vars")
# verl <= 0.7's top-level reward groups: 0.9 still declares them (legacy_reward_impl.yaml) so Hydra accepts
# them, but `main_ppo` never migrates them to `reward.*`, so they are ignored without a word.
VERL_LEGACY_GROUPS = ("custom_reward_function", "reward_model", "sandbox_fusion")


def _package_dir(dist: str, package: str) -> Path:
    try:
        path = Path(importlib.metadata.distribution(dist).locate_file(package))
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{dist} is not installed (make venv installs it with --no-deps)")
    if not path.is_dir():
        pytest.skip(f"{dist} is installed but {path} is missing")
    return path


@pytest.fixture(scope="module")
def verl_dir() -> Path:
    return _package_dir("verl", "verl")


@pytest.fixture(scope="module")
def openrlhf_dir() -> Path:
    return _package_dir("openrlhf", "openrlhf")


# ---- verl: the schema, rebuilt from its YAML ---------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """PyYAML with OmegaConf's float rule: YAML 1.1 reads `1e-6` (no dot) as a string, OmegaConf a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+][0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.VERBOSE),
    list("-+0123456789."))


def _merge(into: dict, new: dict) -> dict:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
    return into


def _at(package: str, data: dict) -> dict:
    for part in reversed([p for p in package.split(".") if p]):
        data = {part: data}
    return data


def compose(path: Path, search: list[Path], package: str = "", choices: dict | None = None,
            overrides: dict | None = None) -> dict:
    """The config `path` composed as Hydra does; `search` is the search path for plain config names,
    `overrides` maps a group to the option chosen on the command line (`thinkrm=general`)."""
    text = path.read_text(encoding="utf-8")
    directive = re.search(r"^#\s*@package\s+(\S+)", text, re.MULTILINE)
    if directive:
        package = "" if directive.group(1) == "_global_" else directive.group(1)
    data = yaml.load(text, Loader=_Loader) or {}
    data.pop("hydra", None)
    defaults = data.pop("defaults", [])
    choices = {} if choices is None else choices
    overrides = overrides or {}
    if "_self_" not in defaults:
        defaults = [*defaults, "_self_"]
    out: dict = {}
    for item in defaults:
        if item == "_self_":
            _merge(out, _at(package, data))
        elif isinstance(item, str):  # a config by name: next to this one, else on the search path
            found = [d / f"{item}.yaml" for d in [path.parent, *search] if (d / f"{item}.yaml").is_file()]
            assert found, f"{path}: default {item!r} not found in {[path.parent, *search]}"
            _merge(out, compose(found[0], search, package, choices, overrides))
        else:
            (key, option), = item.items()
            group, _, target = key.partition("@")
            name = group.split("/")[-1]
            option = overrides.get(name, option)
            option = re.sub(r"\$\{(\w+)\}", lambda m: choices[m.group(1)], str(option))
            choices.setdefault(name, option)
            group_dir = (path.parent / group).resolve()
            assert (group_dir / f"{option}.yaml").is_file(), f"{path}: no option {option!r} in group {group}"
            sub = ".".join(p for p in (package, target or group_dir.name) if p)
            _merge(out, compose(group_dir / f"{option}.yaml", search, sub, choices, overrides))
    return out


def leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(leaves(value, path))
        else:
            out[path] = value
    return out


def nodes(tree: dict) -> set[str]:
    """Every key path, inner nodes included (an override may set a whole subtree)."""
    out = set()
    for path in leaves(tree):
        parts = path.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return out


@pytest.fixture(scope="module")
def verl_config_dir(verl_dir) -> Path:
    return verl_dir / "trainer" / "config"


@pytest.fixture(scope="module")
def verl_schema(verl_config_dir) -> dict:
    return compose(verl_config_dir / "ppo_trainer.yaml", [verl_config_dir])


@pytest.fixture(scope="module")
def verl_load_extern_object(verl_dir):
    """verl's own loader of `reward.custom_reward_function.path` (its module imports only the standard
    library; importing it through the `verl` package would need ray)."""
    spec = importlib.util.spec_from_file_location("verl_import_utils", verl_dir / "utils" / "import_utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.load_extern_object


def _groups(config: Path) -> set[str]:
    """Config groups the primary config's defaults list offers for `group=option` overrides."""
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    return {k.partition("@")[0].split("/")[-1] for item in data.get("defaults", []) if isinstance(item, dict)
            for k in item}


# ---- the commands we publish -------------------------------------------------------------------------


def _code_blocks(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return re.findall(r"^[ \t]*```[^\n]*\n(.*?)^[ \t]*```", text, re.MULTILINE | re.DOTALL)


def _commands(text: str, program: str) -> list[list[str]]:
    """The argument lists of every `program` invocation in shell text (continuation lines joined, `$(...)`
    kept as one word, comments dropped)."""
    text = text.replace("\\\n", " ")
    while (start := text.find("$(")) >= 0:  # command substitutions, nested parentheses included
        depth = 0
        for end in range(start + 1, len(text)):
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            if depth == 0:
                break
        text = text[:start] + "CMD_SUBST" + text[end + 1:]
    out = []
    for line in text.splitlines():
        if program not in line:
            continue
        words = shlex.split(line, comments=True)
        if program in words:
            out.append(words[words.index(program) + 1:])
    return out


def published_commands(program: str) -> list[tuple[str, list[str]]]:
    found = []
    for doc in DOCS:
        for block in _code_blocks(doc):
            found += [(doc.name, args) for args in _commands(block, program)]
    return found


def _verl_overrides(args: list[str]) -> tuple[str | None, list[str]]:
    """(--config-name or None, Hydra overrides) of a main_ppo argument list."""
    name, overrides, it = None, [], iter(args)
    for word in it:
        if word.startswith("--"):
            flag, _, value = word.partition("=")
            value = value or next(it)
            if flag == "--config-path":
                assert value.rstrip("/").endswith("configs/verl"), f"--config-path {value}: not configs/verl"
            elif flag == "--config-name":
                name = value
            else:
                raise AssertionError(f"unexpected main_ppo flag {word}")
        else:
            overrides.append(word)
    return name, overrides


def _compute_score_params() -> set[str]:
    from thinkrm.verl_reward import compute_score

    return {name for name, p in inspect.signature(compute_score).parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def check_verl_overrides(overrides: list[str], composed: dict, groups: set[str], where: str) -> list[str]:
    """Problems with `overrides` applied to the composed config, by Hydra's rules plus ours."""
    keys, params, problems = nodes(composed), _compute_score_params(), []
    for override in overrides:
        m = re.fullmatch(r"(\+\+|\+|~)?([A-Za-z_][\w]*(?:\.[\w]+)*)(?:=(.*))?", override, re.DOTALL)
        if not m:
            problems.append(f"{where}: {override!r} is not a Hydra override")
            continue
        prefix, key = m.group(1) or "", m.group(2)
        if not prefix and key in groups:
            continue  # a config-group choice, checked when composing
        if key.split(".")[0] in VERL_LEGACY_GROUPS:
            problems.append(f"{where}: {key} is a verl <= 0.7 key that main_ppo 0.9 ignores (use reward.*)")
        elif prefix == "+":
            if key in keys:
                problems.append(f"{where}: +{key}: the key exists, Hydra refuses to add it (drop the +)")
            elif not any(key.startswith(ns + ".") for ns in VERL_OPEN_NAMESPACES):
                problems.append(f"{where}: +{key} adds a key verl does not read (misspelt?)")
        elif key not in keys:
            new = any(key.startswith(ns + ".") for ns in VERL_OPEN_NAMESPACES)
            hint = " (a new key: +key=...)" if new else ""
            problems.append(f"{where}: {key} is not in verl's schema{hint}")
        if key.startswith(REWARD_KWARGS + ".") and key.split(".")[3] not in params:
            problems.append(f"{where}: {key}: compute_score has no parameter {key.split('.')[3]!r}")
    return problems


def _verl_runs(verl_config_dir) -> list[tuple[str, Path, dict, list[str]]]:
    """(where, primary config, group choices, overrides) for every verl command we publish."""
    runs = []
    for doc, args in published_commands("verl.trainer.main_ppo"):
        name, overrides = _verl_overrides(args)
        config = VERL_CONFIGS / f"{name}.yaml" if name else verl_config_dir / "ppo_trainer.yaml"
        assert config.is_file(), f"{doc}: --config-name {name}: no {config}"
        groups = _groups(config)
        choices = dict(o.split("=", 1) for o in overrides if o.split("=", 1)[0] in groups)
        runs.append((f"{doc}: main_ppo {' '.join(args)[:80]}...", config, choices, overrides))
    return runs


# ---- verl tests --------------------------------------------------------------------------------------------


def test_schema_rebuild_matches_verls_own_flattened_dump(verl_config_dir, verl_schema):
    dump = yaml.load((verl_config_dir / "_generated_ppo_trainer.yaml").read_text(encoding="utf-8"),
                     Loader=_Loader)
    ours, theirs = leaves(verl_schema), leaves(dump)
    # `model_engine: dp` is written at the root by the `# @package _global_` group file model_engine/dp.yaml;
    # Hydra composes it (see the Hydra test below), verl's dump leaves it out.
    assert set(ours) - set(theirs) == {"model_engine"}
    assert set(theirs) <= set(ours)
    assert {k for k in theirs if ours[k] != theirs[k]} == set()
    assert len(ours) > 500  # the whole trainer config, not a fragment


def test_schema_has_the_keys_the_docs_rely_on_and_not_the_old_ones(verl_schema, verl_dir):
    keys = nodes(verl_schema)
    for key in ("reward.custom_reward_function.path", "reward.custom_reward_function.name",
                "reward.reward_model.enable", "reward.reward_model.model_path",
                "reward.reward_model.rollout.name", "reward.num_workers", "reward.reward_manager.name",
                "algorithm.adv_estimator", "algorithm.norm_adv_by_std_in_grpo",
                "actor_rollout_ref.rollout.n"):
        assert key in keys, key
    # Where a user would look for them from older verl docs, and they are not:
    for key in ("reward.custom_reward_function.reward_kwargs",  # not declared: needs +
                "reward.reward_model.model.path",  # 0.9: reward.reward_model.model_path
                "reward_model.model_path", "reward.reward_model_path"):
        assert key not in keys, key
    # The legacy top-level groups still parse (legacy_reward_impl.yaml declares them) ...
    assert {"custom_reward_function.path", "reward_model.model.path", "reward_model.enable"} <= keys
    # ... but main_ppo never migrates them into reward.* (only the fully-async entry point does), so a run
    # configured with them trains without the custom reward and without a warning.
    main_ppo = (verl_dir / "trainer" / "main_ppo.py").read_text(encoding="utf-8")
    assert "migrate_legacy_reward_impl" not in main_ppo
    reward_loop = verl_dir / "experimental" / "reward_loop" / "reward_loop.py"
    assert "def migrate_legacy_reward_impl" in reward_loop.read_text(encoding="utf-8")


def test_reward_managers_pass_exactly_what_compute_score_accepts(verl_dir):
    """verl's reward managers add `reward_router_address` and `reward_model_tokenizer`, no model path."""
    passed = set()
    managers = sorted((verl_dir / "experimental" / "reward_loop" / "reward_manager").glob("*.py"))
    for path in managers:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "extra_reward_kwargs"
                                                     for t in node.targets)):
                dicts = [n for n in ast.walk(node.value) if isinstance(n, ast.Dict)]
                passed |= {k.value for d in dicts for k in d.keys if isinstance(k, ast.Constant)}
    assert passed == {"reward_router_address", "reward_model_tokenizer"}, (managers, passed)
    assert passed <= _compute_score_params()


def test_our_verl_config_files_use_only_schema_keys(verl_config_dir, verl_schema):
    keys, params = nodes(verl_schema), _compute_score_params()
    files = sorted(VERL_CONFIGS.rglob("*.yaml"))
    assert len(files) >= 4
    for path in files:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader) or {}
        if path.parent == VERL_CONFIGS:
            assert data.pop("hydra") == {"searchpath": ["pkg://verl.trainer.config"]}, path
        data.pop("defaults", None)
        for key in leaves(data):
            assert key.split(".")[0] not in VERL_LEGACY_GROUPS, f"{path.name}: legacy key {key}"
            if key.startswith(REWARD_KWARGS + "."):
                assert key.split(".")[3] in params, f"{path.name}: {key}"
            else:
                assert key in keys, f"{path.name}: {key} is not in verl's schema"


@pytest.mark.parametrize("variant", ["math", "general", "trm"])
def test_grpo_thinkrm_variants_compose_to_grpo_runs(verl_config_dir, verl_load_extern_object, variant):
    config = compose(VERL_CONFIGS / "grpo_thinkrm.yaml", [verl_config_dir], overrides={"thinkrm": variant})
    flat = leaves(config)
    assert flat["algorithm.adv_estimator"] == "grpo"
    assert flat["actor_rollout_ref.rollout.n"] > 1
    import thinkrm.verl_reward

    function = flat["reward.custom_reward_function.path"], flat["reward.custom_reward_function.name"]
    assert verl_load_extern_object(*function) is thinkrm.verl_reward.compute_score
    kwargs = {k.split(".")[-1]: v for k, v in flat.items() if k.startswith(REWARD_KWARGS + ".")}
    assert kwargs["normalize"] != "group"  # verl calls per sample: the adapter rejects it
    assert {"math": "math", "general": "???", "trm": "math"}[variant] == kwargs["verifier"]
    assert flat["reward.reward_model.enable"] is (variant == "trm")
    if variant == "trm":
        assert kwargs["router_engine"] == "${reward.reward_model.rollout.name}"
        assert flat["reward.reward_model.rollout.name"] in ("vllm", "sglang")
        assert kwargs["calibration"] == "???"  # a served TRM's scale must be given
    # token budgets: a whole prompt + response must fit one micro-batch
    per_gpu = flat["actor_rollout_ref.actor.ppo_max_token_len_per_gpu"]
    assert per_gpu >= flat["data.max_prompt_length"] + flat["data.max_response_length"]
    n_gpus = flat["trainer.n_gpus_per_node"] * flat["trainer.nnodes"]
    assert flat["data.train_batch_size"] * flat["actor_rollout_ref.rollout.n"] % n_gpus == 0
    assert flat["data.train_batch_size"] >= flat["actor_rollout_ref.actor.ppo_mini_batch_size"]


def test_verl_commands_in_docs_use_schema_keys(verl_config_dir, verl_load_extern_object):
    runs = _verl_runs(verl_config_dir)
    assert len(runs) >= 4, runs  # the config-file run, plain overrides, the general verifier, the served TRM
    problems = []
    for where, config, choices, overrides in runs:
        composed = compose(config, [verl_config_dir], overrides=choices)
        problems += check_verl_overrides(overrides, composed, _groups(config), where)
        given = {**leaves(composed), **dict(o.split("=", 1) for o in overrides if "=" in o)}
        path, name = given["reward.custom_reward_function.path"], given["reward.custom_reward_function.name"]
        if path == "CMD_SUBST":  # $(python -c 'import thinkrm.verl_reward as m; print(m.__file__)')
            import thinkrm.verl_reward

            path = thinkrm.verl_reward.__file__
        assert callable(verl_load_extern_object(path, name)), where
    assert problems == []


def test_override_checker_catches_misspellings(verl_config_dir, verl_schema):
    """The checker above is the guard: it must reject what Hydra would reject, and what Hydra would accept
    but verl would ignore."""
    groups = _groups(verl_config_dir / "ppo_trainer.yaml")
    good = ["reward.custom_reward_function.path=pkg://thinkrm.verl_reward", "algorithm.adv_estimator=grpo",
            "+reward.custom_reward_function.reward_kwargs.alpha=0.2",
            "+ray_kwargs.ray_init.runtime_env.env_vars.X=1"]
    assert check_verl_overrides(good, verl_schema, groups, "t") == []
    bad = ["reward.custom_reward_functon.path=x",  # typo: Hydra fails
           "reward.custom_reward_function.reward_kwargs.alpha=0.2",  # new key without +: Hydra fails
           "+reward.custom_reward_function.path=x",  # + on an existing key: Hydra fails
           "+reward.custom_reward_functon.reward_kwargs.alpha=0.2",  # Hydra adds it, verl never reads it
           "+reward.custom_reward_function.reward_kwargs.normalise=group",  # compute_score swallows it
           "custom_reward_function.path=x",  # verl <= 0.7: accepted, ignored by main_ppo 0.9
           "reward_model.model.path=/m"]
    for override in bad:
        assert len(check_verl_overrides([override], verl_schema, groups, "t")) == 1, override


def test_hydra_itself_composes_every_config_and_command(verl_config_dir, verl_schema):
    """With hydra-core installed: Hydra's own composition (struct mode, as in main_ppo) of verl's config and
    every command we publish; without it this test is skipped (the checks above do not need it)."""
    pytest.importorskip("hydra", reason="hydra-core not installed (pip install hydra-core)")
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import ConfigCompositionException
    from omegaconf import OmegaConf

    with initialize_config_dir(version_base=None, config_dir=str(verl_config_dir)):
        composed = OmegaConf.to_container(hydra_compose("ppo_trainer"), resolve=False)
        assert set(leaves(composed)) == set(leaves(verl_schema))
        with pytest.raises(ConfigCompositionException):
            hydra_compose("ppo_trainer", overrides=["reward.custom_reward_functon.path=x"])
    # The config files name verl's configs as pkg://verl.trainer.config, which imports verl (and so ray);
    # here the same directory is given as a file:// search path.
    search = f"hydra.searchpath=[file://{verl_config_dir}]"
    for where, config, _, overrides in _verl_runs(verl_config_dir):
        config_dir = config.parent
        extra = [search] if config_dir == VERL_CONFIGS else []
        with initialize_config_dir(version_base=None, config_dir=str(config_dir)):
            given = [o.replace("CMD_SUBST", "/x.py") for o in overrides]
            cfg = hydra_compose(config.stem, overrides=extra + given)
        assert cfg.reward.custom_reward_function.name == "compute_score", where
        assert cfg.algorithm.adv_estimator == "grpo", where


# ---- OpenRLHF ----------------------------------------------------------------------------------------------


def openrlhf_flags(openrlhf_dir: Path) -> dict[str, dict]:
    """Every option train_ppo_ray.py defines: {flag: {"action", "nargs", "choices"}}, from its AST (f-string
    flags in `for prefix in (...)` loops expanded)."""
    tree = ast.parse((openrlhf_dir / "cli" / "train_ppo_ray.py").read_text(encoding="utf-8"))
    flags: dict[str, dict] = {}

    def literal(node, env):
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.JoinedStr):
            return "".join(str(literal(v.value if isinstance(v, ast.FormattedValue) else v, env))
                           for v in node.values)
        if isinstance(node, ast.Name) and node.id in env:
            return env[node.id]
        if isinstance(node, (ast.List, ast.Tuple)):
            return [literal(e, env) for e in node.elts]
        return None

    def visit(node, env):
        if isinstance(node, ast.For) and isinstance(node.target, ast.Name):
            values = literal(node.iter, env)
            if isinstance(values, list):
                for value in values:
                    for child in node.body:
                        visit(child, {**env, node.target.id: value})
                return
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            names = [literal(a, env) for a in node.args]
            kw = {k.arg: literal(k.value, env) for k in node.keywords}
            for name in names:
                if isinstance(name, str) and name.startswith("-"):
                    flags[name] = {k: kw.get(k) for k in ("action", "nargs", "choices")}
        for child in ast.iter_child_nodes(node):
            visit(child, env)

    visit(tree, {})
    return flags


def check_openrlhf_args(args: list[str], flags: dict[str, dict], where: str) -> list[str]:
    problems, i = [], 0
    while i < len(args):
        word = args[i]
        i += 1
        if word == "$@":
            continue
        if not word.startswith("--"):
            problems.append(f"{where}: stray argument {word!r}")
            continue
        flag, eq, inline = word.partition("=")
        spec = flags.get(flag)
        if spec is None:
            problems.append(f"{where}: {flag} is not a train_ppo_ray flag")
            while i < len(args) and not args[i].startswith("--"):  # its values
                i += 1
            continue
        if spec["action"] in ("store_true", "store_false"):
            if eq:
                problems.append(f"{where}: {flag} is a switch and takes no value")
            continue
        want = spec["nargs"] if isinstance(spec["nargs"], int) else 1
        values = [inline] if eq else []
        while len(values) < want and i < len(args) and not args[i].startswith("--"):
            values.append(args[i])
            i += 1
        if spec["nargs"] in ("*", "+"):
            while i < len(args) and not args[i].startswith("--"):
                values.append(args[i])
                i += 1
        if len(values) < want:
            problems.append(f"{where}: {flag} takes {want} value(s), got {values}")
        choices = spec["choices"]
        if isinstance(choices, list) and None not in choices:
            problems += [f"{where}: {flag} {v}: not one of {choices}" for v in values if v not in choices]
    return problems


def _script_args(path: Path) -> list[str]:
    commands = _commands(path.read_text(encoding="utf-8"), "openrlhf.cli.train_ppo_ray")
    assert len(commands) == 1, commands
    return commands[0]


def test_openrlhf_flag_parser_reads_the_real_argparse(openrlhf_dir):
    flags = openrlhf_flags(openrlhf_dir)
    assert len(flags) > 150
    assert "group_norm" in flags["--algo.advantage.estimator"]["choices"]
    assert flags["--algo.kl.use_loss"]["action"] == "store_true"
    assert flags["--algo.dynamic_filtering_range"]["nargs"] == 2
    assert {"--actor.adam.lr", "--critic.adam.lr", "--actor.muon.no_nesterov"} <= set(flags)  # f-string loop
    assert not {"--remote_rm_url", "--label_key", "--advantage_estimator"} & set(flags)  # older spellings


def test_openrlhf_script_uses_only_real_flags(openrlhf_dir):
    flags = openrlhf_flags(openrlhf_dir)
    args = _script_args(OPENRLHF_SCRIPT)
    assert check_openrlhf_args(args, flags, OPENRLHF_SCRIPT.name) == []
    given = dict(itertools.pairwise(args))
    assert given["--reward.remote_url"] == "$REWARD_FILE"
    assert given["--data.label_key"] == "answer"
    assert given["--algo.advantage.estimator"] in ("group_norm", "dr_grpo")
    assert int(given["--rollout.n_samples_per_prompt"]) > 1


def test_openrlhf_script_sets_only_variables_the_adapter_reads():
    adapter = (ROOT / "src" / "thinkrm" / "openrlhf_reward.py").read_text(encoding="utf-8")
    read = set(re.findall(r"\bTHINKRM_[A-Z_]+", adapter))
    script = OPENRLHF_SCRIPT.read_text(encoding="utf-8")
    used = set(re.findall(r"export (THINKRM_[A-Z_]+)", script))
    assert used and used <= read, used - read
    assert "thinkrm.openrlhf_reward" in script


def test_openrlhf_commands_in_docs_use_real_flags(openrlhf_dir):
    flags = openrlhf_flags(openrlhf_dir)
    runs = published_commands("openrlhf.cli.train_ppo_ray")
    assert runs, "the docs show no train_ppo_ray command"
    problems = []
    for doc, args in runs:
        problems += check_openrlhf_args(args, flags, f"{doc}: train_ppo_ray")
    assert problems == []


def test_openrlhf_checker_catches_misspellings(openrlhf_dir):
    flags = openrlhf_flags(openrlhf_dir)
    assert check_openrlhf_args(["--data.label_key", "answer", "--algo.kl.use_loss"], flags, "t") == []
    for bad in (["--data.label_keys", "answer"], ["--label_key", "answer"], ["--algo.kl.use_loss=true"],
                ["--algo.advantage.estimator", "grpo"], ["--algo.dynamic_filtering_range", "0"]):
        assert len(check_openrlhf_args(bad, flags, "t")) == 1, bad
