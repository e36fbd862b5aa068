"""Bradley-Terry training on tiny real models: it learns, saves a plain servable checkpoint, counts bad input.

The task is separable on purpose: the chosen reasoning contains the word "verify" where the rejected one has
another word, at a random position, so a random model scores it near chance and a trained one must attend to
content (not length or the last token) to get it right.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from thinkrm.calibration import Calibration
from thinkrm.formatting import InputEncoder
from thinkrm.io import InputError
from thinkrm.train import CHECKPOINTS, PRESETS, REPORT, SIDECAR, TrainConfig, _reward_config, train

FILLER = (
    "so wait the answer is let me factor first note sum digits minutes seconds compute asks final".split()
)
DECOYS = ["so", "note", "sum", "minutes", "asks", "wrong", "final"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # 2 shared cores: intra-op threads only fight each other on models this small.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_pairs(n: int, seed: int, start: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(start, start + n):
        body = [rng.choice(FILLER) for _ in range(12)]
        pos = rng.randrange(len(body))
        rows.append(
            {
                "id": f"p{i}",
                "prompt": f"Problem {i}: what is {i} + 3?",
                "chosen": " ".join(body[:pos] + ["verify"] + body[pos:]),
                "rejected": " ".join(body[:pos] + [rng.choice(DECOYS)] + body[pos:]),
            }
        )
    return rows


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def fast_config(pairs: Path, out: Path, base: Path, **kw) -> TrainConfig:
    settings = dict(
        pairs=str(pairs),
        output_dir=str(out),
        base=f"hf:{base}",
        learning_rate=1e-2,
        num_epochs=2,
        batch_size=8,
        per_device_batch_size=8,
        warmup_ratio=0.0,
        max_length=256,
        logging_steps=2,
    )
    return TrainConfig(**{**settings, **kw})


def forward_scores(
    model_dir: Path, rows: list[dict], input_format: str = "plain"
) -> tuple[list[float], list[float]]:
    """Scores by a plain transformers forward pass, one item at a time (no padding involved)."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    enc = InputEncoder(tok, max_length=256, input_format=input_format)

    def one(prompt: str, reasoning: str) -> float:
        ids = torch.tensor([enc.encode(prompt, reasoning).input_ids])
        with torch.no_grad():
            return model(input_ids=ids).logits[0, 0].item()

    return [one(r["prompt"], r["chosen"]) for r in rows], [one(r["prompt"], r["rejected"]) for r in rows]


def accuracy(chosen: list[float], rejected: list[float]) -> float:
    return sum(c > r for c, r in zip(chosen, rejected)) / len(chosen)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_reward_model):
    tmp = tmp_path_factory.mktemp("train")
    pairs = write_jsonl(tmp / "pairs.jsonl", make_pairs(64, seed=0))
    out = tmp / "rm"
    report = train(fast_config(pairs, out, tiny_reward_model, eval_fraction=0.25, eval_steps=4))
    return out, report


def test_training_lowers_loss_and_raises_pairwise_accuracy(trained, tiny_reward_model):
    out, report = trained
    assert report.first_loss > 0.6 and report.last_loss < report.first_loss - 0.15
    assert report.eval_pairs > 0 and report.pairs_used + report.eval_pairs == 64
    assert report.eval_accuracy > report.initial_eval_accuracy and report.best_step > 0
    # Independent of TRL's own metric: fresh pairs from the same task, scored by a plain forward pass.
    fresh = make_pairs(40, seed=123, start=1000)
    before = accuracy(*forward_scores(tiny_reward_model, fresh))
    after = accuracy(*forward_scores(out, fresh))
    assert before < 0.85
    assert after >= 0.9 and after > before


def test_output_is_a_plain_checkpoint_with_sidecar_and_report(trained):
    out, report = trained
    sidecar = json.loads((out / SIDECAR).read_text())
    assert sidecar["input_format"] == "plain" and sidecar["max_length"] == 256
    assert sidecar["base"].startswith("hf:") and sidecar["preset"] is None
    saved = json.loads((out / REPORT).read_text())
    assert saved["pairs_used"] == report.pairs_used and saved["steps"] == report.steps > 0
    assert not (out / CHECKPOINTS).exists() and not (out / ".saving").exists()
    model = AutoModelForSequenceClassification.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == "LlamaForSequenceClassification" and model.config.num_labels == 1
    assert model.config.pad_token_id == tok.pad_token_id != tok.eos_token_id


def test_cast_checkpoint_matches_a_model_cast_before_saving(tmp_path, tiny_reward_model):
    from thinkrm.train import cast_checkpoint

    model = AutoModelForSequenceClassification.from_pretrained(tiny_reward_model)
    model.save_pretrained(tmp_path / "cast")  # float32, as a sharded (ZeRO-3 / FSDP2) save writes it
    cast_checkpoint(tmp_path / "cast", "bfloat16")
    model.to(torch.bfloat16).save_pretrained(tmp_path / "ref")
    cast = AutoModelForSequenceClassification.from_pretrained(tmp_path / "cast", dtype="auto")
    ref = AutoModelForSequenceClassification.from_pretrained(tmp_path / "ref", dtype="auto")
    assert cast.dtype == ref.dtype == torch.bfloat16
    assert json.loads((tmp_path / "cast" / "config.json").read_text()).get("dtype") == \
        json.loads((tmp_path / "ref" / "config.json").read_text()).get("dtype")
    for (name, a), (_, b) in zip(cast.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), name
    # Only the checkpoint's own files: no temporary file is left beside them.
    assert sorted(f.name for f in (tmp_path / "cast").iterdir()) == sorted(f.name for f in (tmp_path / "ref").iterdir())


def test_a_stale_saving_folder_does_not_leak_into_the_checkpoint(tmp_path, tiny_reward_model):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(16, seed=1))
    out = tmp_path / "rm"
    (out / ".saving").mkdir(parents=True)
    (out / ".saving" / "model-00002-of-00002.safetensors").write_bytes(b"left by a killed save")
    train(fast_config(pairs, out, tiny_reward_model, max_steps=1))
    assert not (out / ".saving").exists() and not (out / "model-00002-of-00002.safetensors").exists()
    AutoModelForSequenceClassification.from_pretrained(out)


def test_saved_model_scores_the_same_through_hf_scorer(trained):
    from thinkrm import load_scorer

    out, _ = trained
    rows = make_pairs(6, seed=7, start=500)
    chosen, rejected = forward_scores(out, rows)
    with load_scorer(f"hf:{out}", device="cpu", dtype="float32", batch_size=4) as scorer:
        got = scorer.score(
            [(r["prompt"], r["chosen"]) for r in rows] + [(r["prompt"], r["rejected"]) for r in rows]
        )
    assert got == pytest.approx(chosen + rejected, abs=1e-4)


def front_matter(card: str) -> dict:
    head, sep, _ = card.removeprefix("---\n").partition("\n---\n")
    assert card.startswith("---\n") and sep, "the card must open with YAML front matter"
    return yaml.safe_load(head)


def test_checkpoint_carries_its_calibration_and_a_model_card(tmp_path, tiny_reward_model):
    from thinkrm import load_scorer

    held_out = make_pairs(12, seed=21, start=900)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(32, seed=20))
    eval_pairs = write_jsonl(tmp_path / "eval.jsonl", held_out)
    out = tmp_path / "rm"
    report = train(fast_config(pairs, out, tiny_reward_model, eval_pairs=str(eval_pairs), eval_steps=4,
                               keep_best=False))
    cal = Calibration.from_dict(json.loads((out / SIDECAR).read_text())["calibration"])
    assert cal == Calibration.from_dict(report.calibration)
    assert cal == Calibration.from_dict(json.loads((out / REPORT).read_text())["calibration"])
    assert (cal.n, cal.reference) == (12, "chosen sides of 12 held-out pairs")

    with load_scorer(f"hf:{out}", device="cpu", dtype="float32") as scorer:
        assert scorer.calibration == cal
        chosen = [cal.apply(s) for s in scorer.score([(r["prompt"], r["chosen"]) for r in held_out])]
        rejected = [cal.apply(s) for s in scorer.score([(r["prompt"], r["rejected"]) for r in held_out])]
    # Measured on exactly these sides, as scoring encodes them: their median is the centre.
    assert statistics.median(chosen) == pytest.approx(0.0, abs=1e-4)
    assert statistics.median(rejected) < -1.0  # the trained model puts the worse sides well below them

    card = (out / "README.md").read_text()
    meta = front_matter(card)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-classification"
    assert meta["tags"] == ["reward-model", "thinkrm"]
    assert "base_model" not in meta  # a local base is no Hub id
    assert 'prompt + "\\n" + reasoning' in card and "At most 256 tokens" in card
    assert 'thinkrm.load_scorer("hf:' in card
    assert f"| {cal.center:.6g} | {cal.scale:.6g} | 12 | chosen sides of 12 held-out pairs |" in card
    assert f"| held-out pairs | 12 |\n| eval pairwise accuracy | {report.eval_accuracy:.3f} (step" in card
    for framework in ("verl", "--reward.model_name_or_path", "vLLM", "SGLang", "--input-format chat"):
        assert framework in card


def test_too_few_reference_sides_leave_a_usable_uncalibrated_model(tmp_path, tiny_reward_model):
    from thinkrm import load_scorer

    pairs = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(3, seed=22))
    report = train(fast_config(pairs, tmp_path / "rm", tiny_reward_model, max_steps=1))
    assert report.calibration is None and "at least 4 reference scores" in report.calibration_skipped
    assert json.loads((tmp_path / "rm" / SIDECAR).read_text())["calibration"] is None
    assert "Not calibrated: a calibration needs at least 4" in (tmp_path / "rm" / "README.md").read_text()
    assert load_scorer(f"hf:{tmp_path / 'rm'}", device="cpu").calibration is None


def test_model_card_names_a_hub_base_and_a_missing_calibration():
    from thinkrm.train import TrainReport, model_card

    config = TrainConfig.from_preset("trm-8b", pairs="p.jsonl", output_dir="out")
    report = TrainReport(output_dir="out", calibration_skipped="a calibration needs at least 4 reference scores")
    card = model_card(config, report, "LlamaForSequenceClassification")
    assert front_matter(card)["base_model"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert "Not calibrated: a calibration needs at least 4 reference scores." in card
    assert "| eval pairwise accuracy | n/a (no held-out pairs) |" in card


def test_pad_token_is_added_when_base_has_none(tmp_path, tiny_reward_model_no_pad):
    assert AutoTokenizer.from_pretrained(tiny_reward_model_no_pad).pad_token is None
    pairs = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(8, seed=1))
    # leftovers of an earlier, sharded model in the same folder must not survive next to the new weights
    (tmp_path / "rm").mkdir()
    for stale in ("model-00001-of-00002.safetensors", "model.safetensors.index.json", "thinkrm.json"):
        (tmp_path / "rm" / stale).write_text("{}")
    train(fast_config(pairs, tmp_path / "rm", tiny_reward_model_no_pad, max_steps=1))
    assert not (tmp_path / "rm" / "model-00001-of-00002.safetensors").exists()
    assert not (tmp_path / "rm" / "model.safetensors.index.json").exists()
    assert json.loads((tmp_path / "rm" / SIDECAR).read_text())["input_format"] == "plain"
    tok = AutoTokenizer.from_pretrained(tmp_path / "rm")
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    assert tok.pad_token is not None and tok.pad_token_id != tok.eos_token_id
    assert model.config.pad_token_id == tok.pad_token_id
    assert model.get_input_embeddings().num_embeddings >= len(tok)


@pytest.mark.slow
def test_bad_pairs_are_counted_and_skipped(tmp_path, tiny_reward_model):
    long = " ".join(["first note the sum of digits"] * 80)
    rows = make_pairs(8, seed=2) + [
        {"prompt": "x", "chosen": "same", "rejected": "same"},
        {"prompt": "x", "chosen": "", "rejected": "a"},
        {"prompt": "x", "chosen": "a"},
        "not json",
        # differs only in its beginning, which truncation cuts off: no signal left
        {"prompt": "x", "chosen": "so " + long, "rejected": "wait " + long},
        {"prompt": "x", "chosen": long + " verify", "rejected": long + " so"},
    ]
    pairs = write_jsonl(tmp_path / "pairs.jsonl", rows)
    report = train(fast_config(pairs, tmp_path / "rm", tiny_reward_model, max_steps=1))
    assert report.rows_read == 14 and report.pairs_used == 9 and report.bad_total == 5
    assert report.bad_pairs["rejected: identical to 'chosen'"] == 1
    assert report.bad_pairs["chosen: empty reasoning"] == 1
    assert report.bad_pairs["rejected: missing"] == 1
    assert report.bad_pairs["rejected: identical to 'chosen' after truncation to --max-length"] == 1
    assert report.truncated_sides == 2
    assert any("pairs.jsonl:12" in e for e in report.bad_examples)

    skipped = train(fast_config(pairs, tmp_path / "rm2", tiny_reward_model, max_steps=1, over_length="skip"))
    assert skipped.pairs_used == 8 and skipped.truncated_sides == 0
    assert sum(n for what, n in skipped.bad_pairs.items() if "longer than --max-length 256" in what) == 2


@pytest.mark.slow
def test_margins_enter_the_loss_unless_disabled(tmp_path, tiny_reward_model):
    # -log sigmoid(r_c - r_r - m) ~ m for a large margin m; without margins an untrained model is near log 2.
    rows = [dict(r, margin=20.0) for r in make_pairs(8, seed=10)]
    rows[0].pop("margin")  # a pair without a margin is plain Bradley-Terry (margin 0), not an error
    pairs = write_jsonl(tmp_path / "pairs.jsonl", rows)
    with_margin = train(fast_config(pairs, tmp_path / "m", tiny_reward_model, max_steps=1, logging_steps=1))
    without = train(
        fast_config(pairs, tmp_path / "n", tiny_reward_model, max_steps=1, logging_steps=1, use_margin=False)
    )
    assert 15 < with_margin.first_loss < 20
    assert 0.4 < without.first_loss < 1.0


def test_no_usable_pairs_is_a_clear_error_before_training(tmp_path, tiny_reward_model):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "x", "chosen": "a", "rejected": "a"}])
    with pytest.raises(InputError, match=r"no usable training pairs .*pairs.jsonl:1"):
        train(fast_config(pairs, tmp_path / "rm", tiny_reward_model))
    assert not (tmp_path / "rm").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(base="gpt2"), "expected 'hf:MODEL_ID_OR_PATH'"),
        (dict(input_format="xml"), "--input-format"),
        (dict(eval_fraction=1.5), "--eval-fraction"),
        (dict(batch_size=12), "not a multiple of per-device batch"),
        (dict(dtype="float33"), "--dtype"),
    ],
)
def test_bad_options_fail_early(tmp_path, tiny_reward_model, change, message):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(4, seed=3))
    with pytest.raises(ValueError, match=message):
        train(replace(fast_config(pairs, tmp_path / "rm", tiny_reward_model), **change))


def test_presets_follow_the_paper_and_explicit_values_win(monkeypatch):
    config = TrainConfig.from_preset("trm-8b", pairs="p.jsonl", output_dir="out", learning_rate=2e-6)
    assert config.base == "hf:meta-llama/Llama-3.1-8B-Instruct" and config.preset == "trm-8b"
    assert (config.batch_size, config.num_epochs, config.lr_scheduler) == (192, 1.0, "cosine")
    assert (config.warmup_ratio, config.weight_decay, config.center_rewards_coefficient) == (
        0.03,
        1e-3,
        0.001,
    )
    assert (config.max_length, config.bf16, config.gradient_checkpointing) == (8192, True, True)
    assert config.learning_rate == 2e-6 and PRESETS["trm-8b"]["learning_rate"] == 1e-6
    # TRL's RewardConfig turns checkpointing on by default; off must reach the trainer as off, on every
    # transformers release (the argument was renamed in 5.23).
    off = _reward_config(TrainConfig.from_preset("cpu-debug", output_dir="out"), has_eval=False)
    assert off.gradient_checkpointing is False
    monkeypatch.setenv("WORLD_SIZE", "8")
    args = _reward_config(TrainConfig.from_preset("trm-8b", output_dir="out", bf16=False), has_eval=False)
    # 192 pairs per optimizer step however many GPUs run it
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps * 8 == 192
    assert args.center_rewards_coefficient == 0.001 and args.lr_scheduler_type == "cosine"
    assert args.gradient_checkpointing is True
    with pytest.raises(ValueError, match="unknown preset"):
        TrainConfig.from_preset("trm-70b")


def test_chat_input_format_is_recorded_and_used(tmp_path, tiny_reward_model):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(8, seed=4))
    train(fast_config(pairs, tmp_path / "rm", tiny_reward_model, max_steps=1, input_format="chat"))
    assert json.loads((tmp_path / "rm" / SIDECAR).read_text())["input_format"] == "chat"
    from thinkrm import load_scorer

    rows = make_pairs(2, seed=5)
    chosen, _ = forward_scores(tmp_path / "rm", rows, input_format="chat")
    plain, _ = forward_scores(tmp_path / "rm", rows, input_format="plain")
    with load_scorer(f"hf:{tmp_path / 'rm'}", device="cpu", dtype="float32") as scorer:
        got = scorer.score([(r["prompt"], r["chosen"]) for r in rows])
    # The scorer picks the chat mode up from the sidecar without being told.
    assert got == pytest.approx(chosen, abs=1e-4) and got != pytest.approx(plain, abs=1e-4)


@pytest.mark.slow
def test_lora_run_is_merged_into_a_plain_checkpoint(tmp_path, tiny_reward_model):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(64, seed=0))
    out = tmp_path / "rm"
    report = train(
        fast_config(
            pairs,
            out,
            tiny_reward_model,
            lora=True,
            lora_r=8,
            learning_rate=1e-2,
            num_epochs=3,
            eval_fraction=0.25,
            eval_steps=6,
        )
    )
    assert report.best_step is not None  # keep-best reloaded the best adapter before merging
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        score = f.get_tensor("score.weight")
    with safe_open(str(tiny_reward_model / "model.safetensors"), "pt") as f:
        base_keys = set(f.keys())
        base_score = f.get_tensor("score.weight")
    assert keys == base_keys and not any("lora" in k or "modules_to_save" in k for k in keys)
    assert not torch.equal(score, base_score)  # the head trained in full
    assert not (out / "adapter_config.json").exists()
    assert report.last_loss < report.first_loss
    fresh = make_pairs(40, seed=123, start=1000)
    assert accuracy(*forward_scores(out, fresh)) >= 0.8


@pytest.mark.slow
def test_resume_continues_from_the_last_checkpoint(tmp_path, tiny_reward_model):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(32, seed=6))
    out = tmp_path / "rm"
    first = train(
        fast_config(pairs, out, tiny_reward_model, max_steps=2, save_steps=2, keep_checkpoints=True)
    )
    assert first.steps == 2 and (out / CHECKPOINTS / "checkpoint-2").is_dir()
    resumed = train(fast_config(pairs, out, tiny_reward_model, max_steps=4, save_steps=2, resume=True))
    assert resumed.steps == 4
    # only the two new steps ran (about as many tokens as the first run); steps 1-2 came from the checkpoint
    assert resumed.train_tokens < 1.5 * first.train_tokens
    assert [h["step"] for h in resumed.log_history if "loss" in h] == [2, 4]


def test_cli_trains_and_reports(tmp_path, tiny_reward_model):
    from typer.testing import CliRunner

    from thinkrm.cli import app

    pairs = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(8, seed=8) + [{"prompt": "x", "chosen": "a"}])
    result = CliRunner().invoke(
        app,
        [
            "train",
            str(pairs),
            "--base",
            f"hf:{tiny_reward_model}",
            "-o",
            str(tmp_path / "rm"),
            "--preset",
            "cpu-debug",
            "--max-steps",
            "1",
            "--max-length",
            "256",
            "--no-use-margin",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "trained 1 steps on 8 pairs" in result.output and "1 bad pairs skipped" in result.output
    printed = " ".join(result.output.split())  # rich wraps long lines at the runner's 80 columns
    assert "calibration: center" in printed and "(chosen sides of 8 training pairs (no eval set))" in printed
    sidecar = json.loads((tmp_path / "rm" / SIDECAR).read_text())
    assert sidecar["preset"] == "cpu-debug" and sidecar["max_length"] == 256
    # No eval split: calibrated on the training pairs' chosen sides, and it says so.
    assert sidecar["calibration"]["reference"] == "chosen sides of 8 training pairs (no eval set)"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--base", "hf:/no/such/model"], "cannot load it"),
        (["--base", "hf:{base}", "--preset", "nope"], "unknown preset 'nope'"),
        (["--arch", "lite", "--lora"], "--arch lite does not take --lora"),
        (["--arch", "lite", "--max-steps", "3"], "thinkrm train-lite"),
        (["--arch", "gnn"], "--arch 'gnn'"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, tiny_reward_model, args, message):
    from typer.testing import CliRunner

    from thinkrm.cli import app

    pairs = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(4, seed=9))
    args = [a.replace("{base}", str(tiny_reward_model)) for a in args]
    result = CliRunner().invoke(app, ["train", str(pairs), "-o", str(tmp_path / "rm"), *args])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_cli_arch_lite_dispatches_to_train_lite(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import thinkrm.lite
    from thinkrm.cli import app
    from thinkrm.cli.common import progress

    calls = []
    monkeypatch.setattr(thinkrm.lite, "train_lite", lambda *a, **kw: calls.append((a, kw)) or {})
    result = CliRunner().invoke(
        app,
        ["train", "--arch", "lite", "--shared", str(tmp_path), "-o", str(tmp_path / "lite"), "--seed", "3"],
    )
    assert result.exit_code == 0, result.output
    # The library draws no progress bar itself: the CLI hands it its own.
    assert calls == [((None, str(tmp_path / "lite"), str(tmp_path), 3),
                      {"epochs": 40, "cache_dir": None, "progress": progress})]
    # `thinkrm train-lite` is the same trainer with all of its own flags (what `make lite-model` runs).
    calls.clear()
    result = CliRunner().invoke(
        app,
        ["train-lite", "--shared", str(tmp_path), "-o", str(tmp_path / "lite"), "--seed", "3", "--epochs", "2",
         "--cache-dir", str(tmp_path / "cache")],
    )
    assert result.exit_code == 0, result.output
    assert calls == [((None, str(tmp_path / "lite"), str(tmp_path), 3),
                      {"epochs": 2, "cache_dir": str(tmp_path / "cache"), "progress": progress})]


def test_cli_train_lite_flags_match_train_lite():
    # train-lite's defaults are train_lite's own, so `thinkrm train-lite` and the Python API agree.
    import inspect

    from thinkrm.cli.train import LiteTrainOptions
    from thinkrm.lite import train_lite

    sig = inspect.signature(train_lite).parameters
    for name in ("seed", "epochs", "cache_dir"):
        assert getattr(LiteTrainOptions(), name) == sig[name].default, name


@pytest.mark.parametrize("module", ["thinkrm.cli.train", "thinkrm.train"])
def test_python_dash_m_entry_point(module):
    # `accelerate launch -m thinkrm.cli.train` runs the module on every rank; it must expose the same flags as
    # `thinkrm train` without importing the other commands (the server stack). `thinkrm.train` is the older
    # spelling and still works.
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", module, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "--center-rewards-coefficient" in proc.stdout and "--lora" in proc.stdout
    imported = {line.rpartition("|")[2].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    assert "thinkrm.cli.common" in imported  # the listing is read right
    assert not imported & {"thinkrm.serving", "thinkrm.serving.app", "thinkrm.cli.serve", "thinkrm.cli.score"}


def test_accelerate_cpu_flag_keeps_training_on_the_cpu(monkeypatch):
    # `accelerate launch --cpu` only sets ACCELERATE_USE_CPU. TrainingArguments must be told too: otherwise on
    # a GPU machine its device (where the Trainer puts the model) is cuda:0 while the batches stay on the CPU.
    from accelerate.state import AcceleratorState

    config = TrainConfig.from_preset("cpu-debug", output_dir="out")
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    try:
        args = _reward_config(config, has_eval=False)
        assert args.use_cpu and not args.dataloader_pin_memory
        assert args.device.type == "cpu"  # the check that matters on a CUDA machine
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "False")
    assert not _reward_config(config, has_eval=False).use_cpu


@pytest.mark.slow
def test_two_process_launch_trains_once_and_saves_once(tmp_path, tiny_reward_model):
    # The multi-GPU path (ranks, global batch, main-process save, keep-best) on CPU processes via gloo.
    pairs = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(32, seed=0))
    accelerate = Path(sys.executable).with_name("accelerate")
    proc = subprocess.run(
        [
            str(accelerate),
            "launch",
            "--num_processes",
            "2",
            "--cpu",
            "-m",
            "thinkrm.cli.train",
            str(pairs),
            "--base",
            f"hf:{tiny_reward_model}",
            "-o",
            str(tmp_path / "rm"),
            "--max-length",
            "256",
            "--batch-size",
            "8",
            "--per-device-batch-size",
            "4",
            "--learning-rate",
            "1e-2",
            "--num-epochs",
            "2",
            "--eval-fraction",
            "0.25",
            "--eval-steps",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("eval pairwise accuracy") == 1
    report = json.loads((tmp_path / "rm" / REPORT).read_text())
    # 8 pairs per optimizer step = 4 per process x 2 processes, no accumulation
    assert report["steps"] == 2 * -(-report["pairs_used"] // 8)
    sidecar = json.loads((tmp_path / "rm" / SIDECAR).read_text())
    assert sidecar["max_length"] == 256
    # The main process calibrates the saved model while the other one waits for it at the end.
    assert sidecar["calibration"]["n"] == report["eval_pairs"] == report["calibration"]["n"]
    assert (tmp_path / "rm" / "README.md").is_file()
    AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")


@pytest.mark.parametrize(
    "name, kind", [("ddp", "MULTI_GPU"), ("deepspeed_zero3", "DEEPSPEED"), ("fsdp2", "FSDP")]
)
def test_accelerate_configs_load_and_save_full_weights(name, kind):
    from accelerate.commands.config.config_args import load_config_from_file

    path = Path(__file__).resolve().parents[1] / "configs" / "accelerate" / f"{name}.yaml"
    config = load_config_from_file(str(path))  # rejects unknown keys, as `accelerate launch` would
    assert config.distributed_type == kind
    if kind == "DEEPSPEED":
        assert (
            config.deepspeed_config["zero_stage"] == 3 and config.deepspeed_config["zero3_save_16bit_model"]
        )
    if kind == "FSDP":
        assert config.fsdp_config["fsdp_version"] == 2
        assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
