"""GRPO with the gated thinking reward, end to end on a CPU in about a minute.

    python examples/grpo_trl.py                      # TRM-lite scores the reasoning (the default)
    python examples/grpo_trl.py --scorer length      # no model at all: shorter reasoning scores higher
    python examples/grpo_trl.py --scorer thinkrm:http://127.0.0.1:8000   # a running `thinkrm serve`
    python examples/grpo_trl.py --normalize none     # the raw score: watch the thinking term do nothing

It takes about 45 s on two busy CPU cores (most of it the warm-up below; GRPO's 4 steps about 5 s).
What it shows: TRL's `GRPOTrainer` calling `thinkrm.rewards.thinking_reward` as a reward function, with the
gold answer taken from the dataset's `answer` column, and r_v / r_t logged next to TRL's own metrics, with
`thinking_reward/reordered`: the share of GRPO groups (>= 2 correct completions of one prompt) whose order
the thinking term changed, i.e. where it told equally correct answers apart. With TRM-lite's raw scores
(`--normalize none`) that share is ~0: sigmoid(raw) is ~1 for every correct answer.

The policy is built here, not downloaded: a byte-level BPE tokenizer trained on arithmetic text and a
two-layer Llama, then a short supervised warm-up on "Q: What is a + b? A: <think>...</think> The answer is
c." so that some of its answers are right and the gated reward has something to shape (a random policy
would only ever earn 0). At full scale the same reward function is used unchanged with a real policy on
vLLM (see docs/bon-and-rl.md).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

TEMPLATE_Q = "Q: What is {a} + {b}?\nA:"
TEMPLATE_A = " <think>{a} + {b} = {c}</think> The answer is {c}."


def arithmetic(n: int, seed: int, *, low: int = 1, high: int = 9) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(low, high), rng.randint(low, high)
        rows.append({"prompt": TEMPLATE_Q.format(a=a, b=b), "answer": str(a + b),
                     "text": TEMPLATE_Q.format(a=a, b=b) + TEMPLATE_A.format(a=a, b=b, c=a + b)})
    return rows


def build_tiny_policy(path: str | Path, *, warmup_steps: int = 150, seed: int = 0) -> Path:
    """A tiny Llama policy + tokenizer saved at `path`, warmed up on the answer format (a few seconds)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    corpus = [r["text"] for r in arithmetic(400, seed)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=128,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    if warmup_steps:
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        model.train()
        rng = random.Random(seed)
        for _ in range(warmup_steps):
            batch = tokenizer([t + tokenizer.eos_token for t in rng.sample(corpus, 32)], return_tensors="pt",
                              padding=True)
            labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
            loss = model(**batch, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
        model.eval()
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def train(policy: str | Path, output_dir: str | Path, *, scorer: str = "lite", alpha: float = 0.2,
          normalize: str = "auto", steps: int = 4, num_generations: int = 4, prompts: int = 16,
          seed: int = 0):
    """Run GRPO for `steps` steps; returns the trainer (its `state.log_history` holds the rewards)."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from thinkrm.rewards import thinking_reward

    data = Dataset.from_list([{"prompt": r["prompt"], "answer": r["answer"]}
                              for r in arithmetic(prompts, seed + 1)])
    args = GRPOConfig(output_dir=str(output_dir), max_steps=steps,
                      per_device_train_batch_size=num_generations, num_generations=num_generations,
                      max_completion_length=24, learning_rate=1e-4, logging_steps=1, save_strategy="no",
                      report_to="none", use_cpu=True, seed=seed,
                      temperature=1.0, dataloader_num_workers=0, disable_tqdm=True)
    # score_all: log r_t for wrong answers too, to watch the scorer; the reward itself ignores it there.
    reward = thinking_reward(scorer, alpha, normalize=normalize, score_all=True)
    trainer = GRPOTrainer(model=str(policy), reward_funcs=[reward], args=args, train_dataset=data)
    trainer.train()
    return trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scorer", default="lite", help="thinking scorer spec (default lite; 'length' needs "
                        "no model)")
    parser.add_argument("--alpha", type=float, default=0.2)
    parser.add_argument("--normalize", default="auto", choices=("auto", "calibrated", "group", "none"),
                        help="how the thinking score is normalised before the sigmoid (thinkrm.rewards)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--warmup-steps", type=int, default=150)
    parser.add_argument("--output-dir", default=None)
    args = parser.parse_args()

    import torch

    from thinkrm.scoring import load_scorer

    try:  # fail before any training if the scorer cannot load, e.g. TRM-lite weights not installed
        load_scorer(args.scorer).close()
    except ValueError as e:  # InputError is a ValueError
        sys.exit(f"error: scorer {args.scorer!r} is not usable: {e}\n"
                 "(use --scorer length to run without a reward model)")
    torch.set_num_threads(1)  # a tiny model gains nothing from threads, and loses a lot on a busy machine
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.output_dir or tmp)
        policy = build_tiny_policy(out / "policy", warmup_steps=args.warmup_steps)
        trainer = train(policy, out / "grpo", scorer=args.scorer, alpha=args.alpha, normalize=args.normalize,
                        steps=args.steps, num_generations=args.num_generations)
        keys = ("step", "reward", "thinking_reward/r_v", "thinking_reward/r_t", "thinking_reward/reordered",
                "thinking_reward/spread")
        rows = [row for row in trainer.state.log_history if "reward" in row]
        for row in rows:
            print(json.dumps({k: row[k] for k in keys if k in row}))
        reordered = [row["thinking_reward/reordered"] for row in rows if "thinking_reward/reordered" in row]
        if reordered:
            print(f"the thinking term reordered {sum(reordered) / len(reordered):.0%} of the groups with "
                  f"two or more correct completions (mean over {len(reordered)} logged steps)")
        else:
            print("no group had two correct completions: nothing for the thinking term to order")


if __name__ == "__main__":
    main()
