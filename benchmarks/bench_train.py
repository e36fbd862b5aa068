"""Training throughput: thinkrm's `train()` against a bare TRL `RewardTrainer`, same model, data, process.

`train()` wraps RewardTrainer, so the training loop itself should run at the same speed; the target is
ours >= 0.9x TRL's tokens/s. Tokens are the non-padding tokens the trainer counts (TRL's own `num_tokens`);
the clock runs around `trainer.train()` only. End-to-end wall time (loading, encoding, saving) is printed
too, since that is what a user waits for.

    .venv/bin/python benchmarks/bench_train.py            # a few minutes on 2 busy CPU cores
    .venv/bin/python benchmarks/bench_train.py --pairs 512 --hidden 256 --layers 4 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

FILLER = (
    "so wait the answer is let me factor first note sum digits minutes seconds compute asks final".split()
)


def make_model(path: Path, hidden: int, layers: int) -> Path:
    import torch
    from tiny_models import make_tokenizer
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    tok = make_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        num_labels=1,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForSequenceClassification(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def make_pairs(path: Path, n: int, words: int) -> list[dict]:
    rng = random.Random(0)
    rows = []
    for i in range(n):
        body = [rng.choice(FILLER) for _ in range(words)]
        pos = rng.randrange(len(body))
        rows.append(
            {
                "prompt": f"Problem {i}: what is {i} + 3?",
                "chosen": " ".join(body[:pos] + ["verify"] + body[pos:]),
                "rejected": " ".join(body[:pos] + [rng.choice(FILLER)] + body[pos:]),
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def run_thinkrm(pairs: Path, model: Path, out: Path, batch: int) -> tuple[float, float]:
    from thinkrm.train import TrainConfig, train

    start = time.perf_counter()
    report = train(
        TrainConfig(
            pairs=str(pairs),
            output_dir=str(out),
            base=f"hf:{model}",
            batch_size=batch,
            per_device_batch_size=batch,
            learning_rate=1e-4,
            warmup_ratio=0.0,
            max_length=1024,
            logging_steps=1000,
            save_steps=100_000,
        )
    )
    return report.train_tokens / report.train_seconds, time.perf_counter() - start


def run_trl(rows: list[dict], model: Path, out: Path, batch: int) -> tuple[float, float]:
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from thinkrm.train import checkpointing_option

    start = time.perf_counter()
    args = RewardConfig(
        output_dir=str(out),
        per_device_train_batch_size=batch,
        learning_rate=1e-4,
        num_train_epochs=1,
        lr_scheduler_type="cosine",
        bf16=False,
        **checkpointing_option(False),
        logging_steps=1000,
        save_strategy="no",
        report_to="none",
        seed=0,
        max_length=1024,
    )
    trainer = RewardTrainer(
        model=AutoModelForSequenceClassification.from_pretrained(model),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(model),
    )
    t = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t
    trainer.save_model(str(out / "final"))
    return trainer._total_train_tokens / seconds, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--words", type=int, default=60, help="filler words per reasoning")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 = steadier numbers)")
    args = ap.parse_args()

    import datasets
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = make_model(tmp / "base", args.hidden, args.layers)
        rows = make_pairs(tmp / "pairs.jsonl", args.pairs, args.words)
        results: dict[str, list[tuple[float, float]]] = {"ours": [], "trl": []}
        runs = {
            "ours": lambda i: run_thinkrm(tmp / "pairs.jsonl", model, tmp / f"ours{i}", args.batch),
            "trl": lambda i: run_trl(rows, model, tmp / f"trl{i}", args.batch),
        }
        for name in runs:  # untimed warm-up: first-use costs (allocator, lazy imports) hit neither side
            runs[name](-1)
        # Alternate which side goes first, so drift in machine load hits both alike; report medians.
        for i in range(args.repeats):
            for name in ("ours", "trl") if i % 2 == 0 else ("trl", "ours"):
                results[name].append(runs[name](i))
        ours, ours_wall = zip(*results["ours"])
        bare, bare_wall = zip(*results["trl"])
    o, b = statistics.median(ours), statistics.median(bare)
    print(
        f"model: llama hidden={args.hidden} layers={args.layers}; {args.pairs} pairs, batch {args.batch}, "
        f"{args.repeats} repeats, {args.threads} thread(s)"
    )
    print(f"thinkrm train():     {o:10,.0f} tokens/s   end-to-end {statistics.median(ours_wall):6.2f} s")
    print(f"bare RewardTrainer:  {b:10,.0f} tokens/s   end-to-end {statistics.median(bare_wall):6.2f} s")
    print(f"ratio (ours / TRL):  {o / b:.3f}   (target >= 0.90)")


if __name__ == "__main__":
    main()
