"""Bradley-Terry training of thinking reward models, on top of TRL's `RewardTrainer`.

Why a wrapper at all: TRL owns the loss (`-log sigmoid(r_chosen - r_rejected - margin)` plus optional reward
centering), the optimiser, the schedule and the multi-GPU plumbing; what thinkrm adds is everything that makes
the trained model score the way thinkrm will later use it:

* pairs are validated once up front (`thinkrm.pairs`), bad ones counted and reported, never a crash mid-run;
* each side is encoded with thinkrm's own input format and truncation policy, then handed to TRL already
  tokenised (`chosen_ids` / `rejected_ids`), so TRL appends no EOS and applies no chat template behind our
  back: the model trains on exactly the token ids that `hf:` scoring, the server and RL will show it;
* the tokenizer gets a real pad token distinct from EOS (the classifier reads the score at the last non-pad
  token, so padding with EOS would hide a trailing EOS);
* the output is one plain one-label sequence-classification checkpoint (LoRA merged in) that transformers,
  vLLM (`--runner pooling`) and SGLang (`--is-embedding`) load unchanged, plus a `thinkrm.json` sidecar
  recording the input mode, written last so its presence means the checkpoint is complete;
* the saved model's raw scores on reference chosen sides give it a calibration (`thinkrm.calibration`, kept in
  the sidecar), because a Bradley-Terry score's level is arbitrary and the gated RL reward needs one; a
  README.md model card states the input format, the calibration and the evaluation.

Multi-GPU: run this module under accelerate, e.g.
`accelerate launch --config_file configs/accelerate/ddp.yaml -m thinkrm.train pairs.jsonl --base hf:M -o DIR`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .calibration import Calibration, fit_calibration
from .formatting import DEFAULT_MAX_LENGTH, INPUT_FORMATS, SIDECAR, InputConfig, InputEncoder
from .io import InputError, atomic_write, write_json
from .pairs import Pair, load_pairs

REPORT = "train_report.json"
CHECKPOINTS = "checkpoints"
CARD = "README.md"
# Chosen sides scored for the calibration: a median and quartiles of 256 scores are stable to about a tenth of
# their spread, and scoring them costs seconds after any run.
CALIBRATION_SIDES = 256
# Added only when the base tokenizer has no pad token of its own (Llama-3.1 has none).
PAD_TOKEN = "<|thinkrm_pad|>"


def _opt(default: Any, help: str) -> Any:
    """A config field whose help text is also its CLI flag's help."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Everything `thinkrm train` accepts. Each field is also a CLI flag with this default and help
    (`max_length` -> `--max-length`), except `pairs` (the positional argument) and `output_dir` (`-o/--out`)."""

    pairs: str = _opt("", "Preference pairs (JSONL or JSON list, TRL format).")
    output_dir: str = _opt("", "Where the trained checkpoint is written.")
    base: str = _opt("", "Base model, 'hf:MODEL_ID_OR_PATH' (a causal LM or a classifier).")
    preset: str | None = _opt(None, "Named recipe: trm-8b (the paper's) or cpu-debug.")
    input_format: str = _opt("plain", "'plain' = prompt + newline + reasoning (as TRM-8B is served); "
                                      "'chat' = the tokenizer's chat template.")
    max_length: int = _opt(DEFAULT_MAX_LENGTH, "Max tokens per side; longer inputs keep the prompt and the "
                                               "end of the reasoning (see docs).")
    over_length: str = _opt("truncate", "Sides over --max-length: 'truncate' (counted in the report) or "
                                        "'skip' the pair.")
    # optimisation
    learning_rate: float = _opt(1e-5, "Peak learning rate (AdamW).")
    num_epochs: float = _opt(1.0, "Passes over the training pairs.")
    max_steps: int = _opt(-1, "Stop after this many optimizer steps (-1: use epochs).")
    batch_size: int = _opt(8, "Effective (global) batch in pairs; gradient accumulation is derived from it "
                              "and the GPU count.")
    per_device_batch_size: int = _opt(8, "Pairs per device per forward pass.")
    lr_scheduler: str = _opt("cosine", "transformers scheduler name (cosine, linear, ...).")
    warmup_ratio: float = _opt(0.03, "Fraction of steps spent warming up, in [0, 1).")
    weight_decay: float = _opt(0.0, "AdamW weight decay.")
    center_rewards_coefficient: float | None = _opt(None, "Reward centering: adds coef * mean((r_c + r_r)^2) "
                                                          "to keep scores near zero.")
    use_margin: bool = _opt(True, "Subtract each pair's 'margin' inside the sigmoid.")
    bf16: bool = _opt(False, "bfloat16 mixed precision (fp32 master weights).")
    gradient_checkpointing: bool = _opt(False, "Trade compute for activation memory.")
    seed: int = _opt(0, "Seeds the head init, the eval split and data order.")
    # LoRA
    lora: bool = _opt(False, "Train LoRA adapters (score head fully trainable), merged at save.")
    lora_r: int = _opt(16, "LoRA rank.")
    lora_alpha: int = _opt(32, "LoRA alpha.")
    lora_dropout: float = _opt(0.05, "LoRA dropout.")
    lora_target_modules: str = _opt("all-linear", "Comma-separated module names, or 'all-linear'.")
    # evaluation and checkpoints
    eval_pairs: str | None = _opt(None, "Held-out pairs file (instead of --eval-fraction).")
    eval_fraction: float = _opt(0.0, "Hold out this fraction of prompts (all pairs of a prompt go to one "
                                     "side) for evaluation.")
    eval_steps: int = _opt(50, "Evaluate pairwise accuracy every N optimizer steps.")
    keep_best: bool = _opt(True, "With evaluation: save the checkpoint with the best eval accuracy, not the "
                                 "last.")
    save_steps: int = _opt(500, "Resumable checkpoint every N steps (without eval).")
    resume: bool = _opt(False, "Continue from the last checkpoint in OUTPUT_DIR/checkpoints.")
    keep_checkpoints: bool = _opt(False, "Keep OUTPUT_DIR/checkpoints after a successful run (deleted by "
                                         "default).")
    logging_steps: int = _opt(10, "Log loss/accuracy every N steps.")
    dtype: str = _opt("float32", "Weights dtype while training (float32 keeps tiny updates like lr 1e-6 from "
                                 "vanishing).")
    save_dtype: str | None = _opt(None, "Cast the saved checkpoint (e.g. bfloat16).")
    report_to: str = _opt("none", "Experiment tracker(s): none, wandb, tensorboard, ...")

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> TrainConfig:
        """A preset's values, then `overrides` on top (explicit settings always win)."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; expected one of: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], "preset": name, **overrides})


PRESETS: dict[str, dict[str, Any]] = {
    # The paper's TRM-8B recipe. 192 pairs per optimizer step on any number of GPUs (accumulation adapts).
    "trm-8b": dict(base="hf:meta-llama/Llama-3.1-8B-Instruct", batch_size=192, per_device_batch_size=1,
                   learning_rate=1e-6, num_epochs=1.0, lr_scheduler="cosine", warmup_ratio=0.03,
                   weight_decay=1e-3, center_rewards_coefficient=0.001, max_length=8192, bf16=True,
                   gradient_checkpointing=True, save_dtype="bfloat16"),
    # A few minutes on a laptop CPU with a small base: checks the pipeline end to end, not a recipe.
    "cpu-debug": dict(batch_size=8, per_device_batch_size=8, learning_rate=1e-4, num_epochs=1.0,
                      lr_scheduler="linear", warmup_ratio=0.0, max_length=1024, bf16=False,
                      gradient_checkpointing=False, eval_steps=20, logging_steps=5),
}


@dataclass
class TrainReport:
    """What happened: data accounting, loss, eval accuracy, throughput. Saved as train_report.json."""

    output_dir: str
    rows_read: int = 0
    pairs_used: int = 0
    eval_pairs: int = 0
    bad_pairs: dict[str, int] = field(default_factory=dict)
    bad_examples: list[str] = field(default_factory=list)
    truncated_sides: int = 0
    steps: int = 0
    train_loss: float | None = None
    first_loss: float | None = None
    last_loss: float | None = None
    initial_eval_accuracy: float | None = None
    eval_accuracy: float | None = None
    best_step: int | None = None
    train_tokens: int = 0
    train_seconds: float = 0.0
    tokens_per_second: float = 0.0
    log_history: list[dict[str, Any]] = field(default_factory=list)
    calibration: dict[str, Any] | None = None
    calibration_skipped: str | None = None

    @property
    def bad_total(self) -> int:
        return sum(self.bad_pairs.values())


# --------------------------------------------------------------------------------------------- data


@dataclass
class _Encoded:
    rows: list[dict[str, Any]]
    prompts: list[str]


def _encode_pairs(pairs: list[Pair], encoder: InputEncoder, with_margin: bool, config: TrainConfig,
                  report: TrainReport, note_bad) -> _Encoded:
    """Token ids per side from thinkrm's one encoder (format + truncation policy), as scoring sees them."""
    rows, prompts = [], []
    chosen_all = encoder.encode_batch([(p.prompt, p.chosen) for p in pairs])
    rejected_all = encoder.encode_batch([(p.prompt, p.rejected) for p in pairs])
    for p, (chosen, cut_c), (rejected, cut_r) in zip(pairs, chosen_all, rejected_all):
        if (cut_c or cut_r) and config.over_length == "skip":
            note_bad(InputError(f"longer than --max-length {config.max_length} tokens",
                                field="chosen" if cut_c else "rejected"), p)
            continue
        if chosen == rejected:
            # Two different traces can agree on all that survives truncation; such a pair has no signal.
            same = InputError("identical to 'chosen' after truncation to --max-length", field="rejected")
            note_bad(same, p)
            continue
        report.truncated_sides += cut_c + cut_r
        row = {"chosen_ids": chosen, "rejected_ids": rejected}
        if with_margin:
            row["margin"] = float(p.margin or 0.0)
        rows.append(row)
        prompts.append(p.prompt)
    return _Encoded(rows, prompts)


def _split_by_prompt(enc: _Encoded, fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out whole prompts, so eval accuracy measures new problems, not new pairs of seen ones.

    A prompt's side is decided by a seeded hash of its text: stable across runs and processes.
    """
    train, held = [], []
    for row, prompt in zip(enc.rows, enc.prompts):
        h = int.from_bytes(hashlib.sha256(f"{seed}\0{prompt}".encode()).digest()[:8], "big") / 2**64
        (held if h < fraction else train).append(row)
    return train, held


@dataclass
class _Reference:
    """The chosen sides a calibration is measured on (their token ids) and what they are."""

    ids: list[list[int]]
    what: str


def _calibration_reference(train_rows: list[dict], eval_rows: list[dict], seed: int) -> _Reference:
    """Chosen sides of the held-out pairs, else of the training pairs: traces judged the better of their pair,
    where the gated reward's sigmoid should be centred. Held-out ones come first because the model has fitted
    the training ones. A seeded sample when there are more than CALIBRATION_SIDES."""
    rows, where = (eval_rows, "held-out pairs") if eval_rows else (train_rows, "training pairs (no eval set)")
    picked = rows
    if len(rows) > CALIBRATION_SIDES:
        picked = random.Random(seed).sample(rows, CALIBRATION_SIDES)
    of = f"{len(picked)} of {len(rows)}" if len(picked) < len(rows) else str(len(rows))
    return _Reference([r["chosen_ids"] for r in picked], f"chosen sides of {of} {where}")


def _read_pairs(path: str, report: TrainReport, note_bad) -> list[Pair]:
    bad = 0

    def on_bad(err: InputError) -> None:
        nonlocal bad
        bad += 1
        note_bad(err, None)

    pairs = list(load_pairs(path, skip_bad=True, on_bad=on_bad))
    report.rows_read += len(pairs) + bad
    return pairs


# --------------------------------------------------------------------------------------------- model


def _resolve_base(base: str) -> str:
    if not base:
        raise ValueError("no base model: pass --base hf:MODEL_ID_OR_PATH (or a --preset that names one)")
    kind, sep, name = base.partition(":")
    if not sep or kind != "hf" or not name:
        raise ValueError(f"--base {base!r}: expected 'hf:MODEL_ID_OR_PATH'")
    return name


def _load_tokenizer(config: TrainConfig):
    """The base tokenizer, with a real pad token distinct from EOS (added when it has none)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(_resolve_base(config.base))
    except OSError as e:
        raise ValueError(f"--base {config.base!r}: cannot load it ({str(e).splitlines()[0]})") from None
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    return tokenizer


def _load_model(config: TrainConfig, tokenizer):
    """Called after the trainer arguments exist, so ZeRO-3 can partition the weights while they load."""
    from transformers import AutoModelForSequenceClassification

    try:
        # A causal-LM base gets a fresh one-output head here; a classifier base keeps its head.
        model = AutoModelForSequenceClassification.from_pretrained(
            _resolve_base(config.base), num_labels=1, dtype=_torch_dtype(config.dtype, "--dtype"))
    except OSError as e:
        raise ValueError(f"--base {config.base!r}: cannot load it ({str(e).splitlines()[0]})") from None
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def _torch_dtype(name: str, flag: str):
    import torch

    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"{flag} {name!r}: expected a torch dtype such as float32 or bfloat16")
    return dtype


def _lora_config(config: TrainConfig):
    from peft import LoraConfig, TaskType

    targets = config.lora_target_modules
    if targets != "all-linear":
        targets = [t.strip() for t in targets.split(",")]
    return LoraConfig(task_type=TaskType.SEQ_CLS, r=config.lora_r, lora_alpha=config.lora_alpha,
                      lora_dropout=config.lora_dropout, target_modules=targets,
                      # The head starts random: it must be trained in full, not through a low-rank update.
                      modules_to_save=["score"])


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def checkpointing_option(enabled: bool) -> dict[str, bool]:
    """The activation-checkpointing argument of `RewardConfig` under the name this transformers knows.

    transformers 5.23 renamed `gradient_checkpointing` to `activation_checkpointing` (the old name stays as
    an alias that warns); earlier releases know only the old one. Always pass it: TRL defaults it to on.
    """
    from trl import RewardConfig

    name = "activation_checkpointing"
    if name not in {f.name for f in fields(RewardConfig)}:
        name = "gradient_checkpointing"
    return {name: enabled}


def _reward_config(config: TrainConfig, has_eval: bool):
    import torch
    from trl import RewardConfig

    per_step = config.per_device_batch_size * _world_size()
    if config.batch_size % per_step:
        raise ValueError(f"--batch-size {config.batch_size} is not a multiple of per-device batch "
                         f"{config.per_device_batch_size} x {_world_size()} processes")
    evaluating = has_eval and config.eval_steps > 0
    keep_best = evaluating and config.keep_best
    return RewardConfig(
        output_dir=str(Path(config.output_dir) / CHECKPOINTS),
        per_device_train_batch_size=config.per_device_batch_size,
        per_device_eval_batch_size=config.per_device_batch_size,
        gradient_accumulation_steps=config.batch_size // per_step,
        learning_rate=config.learning_rate, num_train_epochs=config.num_epochs, max_steps=config.max_steps,
        lr_scheduler_type=config.lr_scheduler, weight_decay=config.weight_decay,
        warmup_steps=config.warmup_ratio,  # transformers reads a value below 1 as a ratio
        center_rewards_coefficient=config.center_rewards_coefficient,
        bf16=config.bf16, **checkpointing_option(config.gradient_checkpointing),
        # Already encoded and truncated by thinkrm; TRL's own filter would drop long pairs silently.
        max_length=None,
        eval_strategy="steps" if evaluating else "no", eval_steps=config.eval_steps if evaluating else None,
        # keep-best needs a checkpoint at every evaluation; otherwise checkpoints exist only for --resume.
        save_strategy="steps", save_steps=config.eval_steps if keep_best else config.save_steps,
        save_total_limit=1 if keep_best else 2, load_best_model_at_end=keep_best,
        metric_for_best_model="eval_accuracy" if keep_best else None,
        greater_is_better=True if keep_best else None,
        logging_steps=config.logging_steps, seed=config.seed, data_seed=config.seed,
        report_to=config.report_to,
        # `accelerate launch --cpu` only sets ACCELERATE_USE_CPU; TrainingArguments must be told as well, or
        # its own device (which the Trainer moves the model to) falls back to cuda:0 on a GPU machine while
        # the accelerator keeps the batches on the CPU.
        use_cpu=_use_cpu(),
        # Pinned host memory only helps copies to a GPU; on CPU runs it just warns.
        dataloader_pin_memory=torch.cuda.is_available() and not _use_cpu(),
    )


def _use_cpu() -> bool:
    """Whether this run was asked to stay on the CPU (`accelerate launch --cpu` sets ACCELERATE_USE_CPU)."""
    return os.environ.get("ACCELERATE_USE_CPU", "false").strip().lower() in ("1", "true", "yes", "y", "on")


# --------------------------------------------------------------------------------------------- train


def _validate(config: TrainConfig) -> None:
    if not config.pairs:
        raise ValueError("no training pairs given")
    if not config.output_dir:
        raise ValueError("no output directory: pass -o DIR")
    if config.input_format not in INPUT_FORMATS:
        raise ValueError(f"--input-format {config.input_format!r}: expected one of "
                         f"{', '.join(INPUT_FORMATS)}")
    if config.over_length not in ("truncate", "skip"):
        raise ValueError(f"--over-length {config.over_length!r}: expected 'truncate' or 'skip'")
    if not 0.0 <= config.warmup_ratio < 1.0:
        raise ValueError(f"--warmup-ratio {config.warmup_ratio}: expected a value in [0, 1)")
    if not 0.0 <= config.eval_fraction < 1.0:
        raise ValueError(f"--eval-fraction {config.eval_fraction}: expected a value in [0, 1)")
    if config.eval_pairs and config.eval_fraction:
        raise ValueError("pass either --eval-pairs or --eval-fraction, not both")
    InputConfig(config.input_format, config.max_length)  # same limits the scorer will apply when reading it
    _torch_dtype(config.dtype, "--dtype")
    if config.save_dtype:
        _torch_dtype(config.save_dtype, "--save-dtype")
    _resolve_base(config.base)


def train(config: TrainConfig) -> TrainReport:
    """Train a reward model on `config.pairs` and write a servable checkpoint to `config.output_dir`.

    Raises `InputError` / `ValueError` before any training starts when the input cannot work (no usable
    pairs, unknown base, bad option); bad individual pairs are skipped and counted in the report instead.
    """
    _validate(config)
    out = Path(config.output_dir)
    report = TrainReport(output_dir=str(out))
    bad: Counter[str] = Counter()

    def note_bad(err: InputError, pair: Pair | None) -> None:
        what = f"{err.field}: {err.reason}" if err.field else err.reason
        bad[what] += 1
        if len(report.bad_examples) < 20:
            where = pair.source if pair is not None and pair.source else None
            report.bad_examples.append(f"{where}: {err}" if where and not err.file else str(err))

    train_pairs = _read_pairs(config.pairs, report, note_bad)
    eval_list = _read_pairs(config.eval_pairs, report, note_bad) if config.eval_pairs else []

    from transformers import set_seed

    tokenizer = _load_tokenizer(config)
    encoder = InputEncoder(tokenizer, max_length=config.max_length, input_format=config.input_format)
    # TRL's collator takes margins from all rows or none; a pair without one gets 0 (plain Bradley-Terry).
    with_margin = config.use_margin and any(p.margin is not None for p in train_pairs)
    enc = _encode_pairs(train_pairs, encoder, with_margin, config, report, note_bad)
    if config.eval_pairs:
        eval_enc = _encode_pairs(eval_list, encoder, with_margin, config, report, note_bad)
        train_rows, eval_rows = enc.rows, eval_enc.rows
    elif config.eval_fraction:
        train_rows, eval_rows = _split_by_prompt(enc, config.eval_fraction, config.seed)
    else:
        train_rows, eval_rows = enc.rows, []
    report.bad_pairs = dict(bad)
    if not train_rows:
        first = report.bad_examples[0] if report.bad_examples else "file is empty"
        raise InputError(f"no usable training pairs ({report.bad_total} bad; first: {first})",
                         file=config.pairs)
    if (config.eval_fraction or config.eval_pairs) and not eval_rows:
        raise InputError("the evaluation split is empty; raise --eval-fraction or check --eval-pairs",
                         file=config.eval_pairs or config.pairs)
    report.pairs_used, report.eval_pairs = len(train_rows), len(eval_rows)
    reference = _calibration_reference(train_rows, eval_rows, config.seed)

    args = _reward_config(config, has_eval=bool(eval_rows))
    if config.lora and _sharded_launch(args):
        raise ValueError("--lora is merged into a plain checkpoint on one process, which needs unsharded "
                         "weights: use it with configs/accelerate/ddp.yaml (ZeRO-3 / FSDP2 are for full "
                         "fine-tuning)")
    # The head is initialised at load time: seed first so a run is reproducible.
    set_seed(config.seed)
    model = _load_model(config, tokenizer)
    trainer = _make_trainer(config, args, model, tokenizer, train_rows, eval_rows)
    if trainer.accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        # The sidecar marks a complete checkpoint; a stale one must not vouch for files about to be replaced.
        (out / SIDECAR).unlink(missing_ok=True)

    resume = config.resume and _last_checkpoint(out / CHECKPOINTS) is not None
    if eval_rows and not resume:
        report.initial_eval_accuracy = trainer.evaluate()["eval_accuracy"]
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=True if resume else None)
    report.train_seconds = time.perf_counter() - start
    _fill_report(report, trainer, result)

    _save(trainer, config, out, report, reference)
    return report


def _sharded_launch(args) -> bool:
    """Whether `accelerate launch` shards the weights (ZeRO-3 or FSDP), read before any model is built."""
    zero3 = args.deepspeed_plugin is not None and args.deepspeed_plugin.zero_stage == 3
    return zero3 or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true")


def _make_trainer(config: TrainConfig, args, model, tokenizer, train_rows: list[dict], eval_rows: list[dict]):
    from datasets import Dataset
    from trl import RewardTrainer

    return RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(train_rows),
                         eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
                         processing_class=tokenizer,
                         peft_config=_lora_config(config) if config.lora else None)


def _last_checkpoint(path: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(path)) if path.is_dir() else None


def _fill_report(report: TrainReport, trainer, result) -> None:
    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    # Step 0 is the evaluation before training; keep-best only ever chose among later ones.
    evals = [h for h in history if "eval_accuracy" in h and h["step"] > 0]
    report.steps = trainer.state.global_step
    report.train_loss = result.training_loss
    report.first_loss = losses[0] if losses else None
    report.last_loss = losses[-1] if losses else None
    if evals:
        best = evals[-1]
        if trainer.args.load_best_model_at_end:  # max() keeps the earliest of equals, as keep-best does
            best = max(evals, key=lambda h: h["eval_accuracy"])
        report.eval_accuracy, report.best_step = best["eval_accuracy"], best["step"]
    # TRL's own count (non-padding tokens, gathered over processes); the log has it only at logging steps.
    report.train_tokens = int(trainer._total_train_tokens)
    runtime = result.metrics.get("train_runtime") or report.train_seconds
    report.tokens_per_second = report.train_tokens / runtime if runtime else 0.0
    report.log_history = history


def _save(trainer, config: TrainConfig, out: Path, report: TrainReport, reference: _Reference) -> None:
    """Write the plain checkpoint into a temporary folder, move it into `out`, calibrate it, write the report
    and model card, then the sidecar last."""
    acc = trainer.accelerator
    tmp = out / ".saving"
    if acc.is_main_process:
        # A save killed half-way leaves files here that the move below would take for this run's.
        shutil.rmtree(tmp, ignore_errors=True)
    acc.wait_for_everyone()
    sharded = trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled
    if sharded:
        # Gathers the full weights from every rank (ZeRO-3 / FSDP2 configs ask for a full state dict); they
        # come out in the training dtype, so --save-dtype is applied to the written files.
        trainer.save_model(str(tmp))
        if config.save_dtype and acc.is_main_process:
            cast_checkpoint(tmp, config.save_dtype)
    elif acc.is_main_process:
        model = acc.unwrap_model(trainer.model)
        if config.lora:
            model = model.merge_and_unload()
        if config.save_dtype:
            model = model.to(_torch_dtype(config.save_dtype, "--save-dtype"))
        model.save_pretrained(str(tmp))
        trainer.processing_class.save_pretrained(str(tmp))
    acc.wait_for_everyone()
    if acc.is_main_process:
        # Calibrate where training ran; a --cpu run stays on the CPU even if a GPU is visible.
        _finish(config, out, report, reference, "cpu" if _use_cpu() else str(acc.device))
    # Only the main process scores and writes; the others wait, so a launch ends with a complete checkpoint.
    acc.wait_for_everyone()


def _finish(config: TrainConfig, out: Path, report: TrainReport, reference: _Reference, device: str) -> None:
    """The main process's part of `_save`, once the weights are in `out/.saving`."""
    tmp = out / ".saving"
    # Trainer.save_model adds its pickled arguments; they are no part of a servable checkpoint.
    (tmp / "training_args.bin").unlink(missing_ok=True)
    new = {f.name for f in tmp.iterdir()}
    for f in out.iterdir():
        # Weights of an earlier run in the same folder (other shards, an index) would mix with the new ones.
        stale_weights = f.suffix in (".safetensors", ".bin") or f.name.endswith(".index.json")
        if f.is_file() and f.name not in new and stale_weights:
            f.unlink()
    for name in new:
        os.replace(tmp / name, out / name)
    tmp.rmdir()
    try:
        report.calibration = _calibrate(config, out, reference, device).to_dict()
    except ValueError as e:  # too few reference sides, or all scored alike: the model is still usable
        report.calibration_skipped = str(e)
    write_json(out / REPORT, _report_dict(report))
    architecture = json.loads((out / "config.json").read_text(encoding="utf-8"))["architectures"][0]
    with atomic_write(out / CARD) as f:
        f.write(model_card(config, report, architecture))
    write_json(out / SIDECAR, {
        "input_format": config.input_format,
        "max_length": config.max_length,
        "base": config.base,
        "preset": config.preset,
        "calibration": report.calibration,
        "trained_with": {k: v for k, v in asdict(config).items() if k not in ("pairs", "output_dir")},
    })
    if not config.keep_checkpoints:
        shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)


def _calibrate(config: TrainConfig, out: Path, reference: _Reference, device: str) -> Calibration:
    """Fit a calibration to the saved checkpoint's raw scores on the reference sides.

    The checkpoint is scored as users will load it (save dtype, LoRA merged, the kept best step), from the
    token ids it was trained or evaluated on. Batches of two sides per training pair fit where training did.
    """
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    from .hf_scorer import HFScorer

    # Under ZeRO-3, `from_pretrained` would partition the weights over every process, and the others are
    # waiting at a barrier: training is over, so this process loads one whole copy for itself.
    unset_hf_deepspeed_config()
    with HFScorer(str(out), device=device, batch_size=2 * config.per_device_batch_size,
                  max_length=config.max_length, input_format=config.input_format) as scorer:
        scores = scorer.score_encoded(reference.ids)
    return fit_calibration(scores, reference=reference.what)


# Markdown of the README.md model card `thinkrm train` writes into every checkpoint (filled by `model_card`).
CARD_TEMPLATE = """\
---
{front_matter}
---

# Thinking reward model

A thinking reward model (TRM) trained with `thinkrm train`: it scores *how* a model reasoned (a clean path
against detours, restarts, filler and false steps), not whether its answer is right. It is a one-label
sequence classifier (`{architecture}`) fine-tuned from `{base}` with the Bradley-Terry loss on preference
pairs of reasoning traces. Its score is the raw logit: unbounded, higher = better reasoning. Only differences
between scores were trained, so the level of a score means nothing by itself (see Calibration).

## Input

The model reads {text}. The reasoning is the text before the end-of-thinking marker (`</think>`), never the
final answer. It is tokenized with this checkpoint's tokenizer, which adds one BOS token itself; nothing else
is added (no second BOS, no EOS).

At most {max_length} tokens (`max_length` in `thinkrm.json`). A longer input keeps the whole prompt and the
*end* of the reasoning, which then starts with `[... earlier reasoning truncated ...]`; the prompt is cut too
(its beginning kept, then `[... rest of prompt truncated ...]`) only when it alone would leave the reasoning
less than a quarter of the budget. thinkrm's scorers build exactly this input, reading the format and the
length from `thinkrm.json`:

```python
import thinkrm

scorer = thinkrm.load_scorer("hf:DIR")  # DIR: a local copy of this checkpoint, where thinkrm.json is read
scores = scorer.score([("What is 2 + 3?", "2 + 3 = 5. So the answer is 5.")])  # raw, higher = better
scorer.calibration  # the numbers below
```

## Calibration

{calibration}

## Training and evaluation

| | |
| --- | --- |
| training pairs used | {pairs_used} (of {rows_read} rows read; {bad_total} bad pairs skipped; \
{truncated} sides truncated) |
| held-out pairs | {eval_pairs} |
| eval pairwise accuracy | {accuracy} |
| optimizer steps | {steps} |
| loss (first -> last logged; mean) | {first_loss} -> {last_loss}; {train_loss} |
| recipe | preset {preset}, learning rate {learning_rate}, global batch {batch_size} pairs, {length}{lora} |

A held-out pair counts as right when its chosen side scores strictly higher. During training the accuracy is
TRL's mean of per-batch accuracies (`thinkrm eval-pairs` gives the exact figure). Everything is in
`train_report.json`, every setting in `thinkrm.json` (`trained_with`).

## Served by other frameworks: feed it this input

Scores mean something only for the input above, and frameworks' own reward-model paths build theirs
differently: verl's reward model worker (`reward.reward_model.enable=True` without a custom reward function)
renders a chat template over the prompt and the whole response; OpenRLHF's `--reward.model_name_or_path`
scores the policy's own token ids (its chat template, the answer, its end-of-turn token); vLLM and SGLang chat
endpoints apply a chat template and may add a BOS of their own, or a different one. Nothing fails: the numbers
are just not this model's scores. Use thinkrm's scorers and adapters, which send the input above:
`thinkrm.verl_reward`, `thinkrm/openrlhf_reward.py`, `thinkrm serve`, or the `vllm:URL` / `sglang:URL`
scorers against a server started on this checkpoint (`vllm serve DIR --runner pooling`,
`python -m sglang.launch_server --model-path DIR --is-embedding`). If a pipeline can only show the model
chat-templated text, train the model on that: `thinkrm train --input-format chat`.
"""

CARD_CALIBRATION = """\
| center | scale | reference scores | measured on |
| --- | --- | --- | --- |
| {center:.6g} | {scale:.6g} | {n} | {reference} |

`z = (score - center) / scale` is about 0 for a typical reference trace (the better trace of its pair) and
about -1 / +1 at the quartiles (scale = interquartile range / 1.349, a standard deviation that outliers cannot
inflate). thinkrm's gated RL reward for a correct answer, `r = r_v * (1 - a + a * sigmoid(z))`, takes z
rather than the raw score (`normalize="calibrated"`, which `auto` picks when the scorer carries a
calibration), so the thinking term spreads over (1 - a, 1) instead of sitting at one end: with a = 0.2 a
typical reference trace gets 0.9, one a scale above it 0.946, one a scale below 0.854; wrong answers get 0
either way. `load_scorer("hf:DIR")` reads these numbers from `thinkrm.json`; for a copy served elsewhere pass
them yourself: `load_scorer(spec, calibration="{center:.6g},{scale:.6g}")`."""

CARD_NO_CALIBRATION = """\
Not calibrated: {why}. Fit one with `thinkrm.calibration.fit_calibration` on this model's raw scores of
correct traces and pass it to a scorer as `calibration="CENTER,SCALE"`."""


def model_card(config: TrainConfig, report: TrainReport, architecture: str) -> str:
    """README.md of a trained checkpoint: what it is, its exact input, its calibration and evaluation, and
    where frameworks would feed it something else."""
    base = _resolve_base(config.base)
    front = ["library_name: transformers"]
    # The Hub refuses a card whose base_model is no Hub id, so a local base is named in the text only.
    if not Path(base).expanduser().exists():
        front.append(f"base_model: {json.dumps(base)}")
    front += ["pipeline_tag: text-classification", "tags:", "- reward-model", "- thinkrm"]
    if config.input_format == "plain":
        text = 'the text `prompt + "\\n" + reasoning`, with no chat template'
    else:
        text = ("the tokenizer's chat template rendering a user turn (the prompt) and an assistant turn (the "
                "reasoning), without a leading BOS the template writes itself")
    if report.calibration is not None:
        calibration = CARD_CALIBRATION.format(**report.calibration)
    else:
        calibration = CARD_NO_CALIBRATION.format(why=report.calibration_skipped)

    def num(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.4g}"

    accuracy = "n/a (no held-out pairs)"
    if report.eval_accuracy is not None:
        before = report.initial_eval_accuracy
        accuracy = (f"{report.eval_accuracy:.3f} (step {report.best_step}; "
                    f"{'n/a' if before is None else f'{before:.3f}'} before training)")
    return CARD_TEMPLATE.format(
        front_matter="\n".join(front), architecture=architecture, base=base, text=text,
        max_length=config.max_length, calibration=calibration, pairs_used=report.pairs_used,
        rows_read=report.rows_read, bad_total=report.bad_total, truncated=report.truncated_sides,
        eval_pairs=report.eval_pairs, accuracy=accuracy, steps=report.steps,
        first_loss=num(report.first_loss), last_loss=num(report.last_loss), train_loss=num(report.train_loss),
        preset=config.preset or "none", learning_rate=f"{config.learning_rate:g}",
        batch_size=config.batch_size,
        length=f"{config.max_steps} steps" if config.max_steps > 0 else f"{config.num_epochs:g} epochs",
        lora=", LoRA (merged)" if config.lora else "")


def cast_checkpoint(folder: Path, dtype_name: str) -> None:
    """Cast the floating-point tensors of a saved checkpoint's safetensors files to `dtype_name` in place and
    record the dtype in its config.json, as `save_pretrained` does for a model cast before saving."""
    from safetensors import safe_open
    from safetensors.torch import save

    dtype = _torch_dtype(dtype_name, "--save-dtype")
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            meta = st.metadata()
            tensors = {k: st.get_tensor(k) for k in st.keys()}
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
        with atomic_write(f, "wb") as out:
            out.write(save(tensors, metadata=meta))
    cfg_file = folder / "config.json"
    if cfg_file.is_file():
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        # transformers >= 5 writes `dtype`; a config from an older release names it `torch_dtype`.
        cfg["torch_dtype" if "torch_dtype" in cfg and "dtype" not in cfg else "dtype"] = dtype_name
        write_json(cfg_file, cfg)


def _report_dict(report: TrainReport) -> dict[str, Any]:
    d = asdict(report)
    d["bad_total"] = report.bad_total
    return d


if __name__ == "__main__":
    # Run as a program (`accelerate launch -m thinkrm.train`, the older spelling of `-m thinkrm.cli.train`),
    # this file is not the library module and the import below is no cycle: the CLI owns the flags.
    from thinkrm.cli.train import main

    main()
