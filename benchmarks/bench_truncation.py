"""Cost of fitting long thinking traces into a reward model's window (`InputEncoder.encode_batch`).

A TRM reads at most `max_length` tokens (8,192 for TRM-8B), while a long thinking trace runs to 30,000 tokens
and more, so nearly every such trace is cut: prompt kept, end of the reasoning kept (thinkrm.formatting).
Cutting used to tokenize a trace about three times over; this measures it against reading each trace once
with a plain batched tokenizer call (`plain`), in the same process, interleaved.

The tokenizer is a byte-level BPE (16,000 tokens) trained here on the first 200 AMC23 traces, so it splits
this text about as finely as a real LLM tokenizer does (3 characters per token). Traces: the longcot-dev
pools of ../shared/data: the `--items` longest, and a random `--items` of all lengths.

Target: cutting costs no more than reading once (encode / plain >= 1.0 on the longest traces).

    python benchmarks/bench_truncation.py [--shared ../shared/data] [--items 60] [--max-length 8192]
        [--baseline DIR]   # DIR holds `thinkrm_baseline`, a copy of an older src/thinkrm, compared side by side
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def train_tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=16_000, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def measure(name: str, items: list[tuple[str, str]], encoders: dict, tokenizer, repeats: int) -> dict:
    texts = {k: [enc.text(p, r) for p, r in items] for k, enc in encoders.items()}
    fns = {"plain": lambda: tokenizer(texts["encode"], add_special_tokens=True, verbose=False)["input_ids"]}
    fns.update({k: (lambda enc=enc: enc.encode_batch(items)) for k, enc in encoders.items()})
    best = dict.fromkeys(fns, float("inf"))
    outputs = {}
    for _ in range(repeats):
        for k, fn in fns.items():  # interleaved, so a busy machine slows all alike
            t0 = time.perf_counter()
            outputs[k] = fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    tokens = sum(len(ids) for ids in outputs["plain"])
    encoded = outputs["encode"]
    chars = sum(len(t) for t in texts["encode"])
    print(f"\n{name}: {len(items)} traces, {tokens / len(items):,.0f} tokens on average "
          f"({chars / tokens:.1f} characters per token), "
          f"{sum(e.truncated for e in encoded)} cut to {encoders['encode'].max_length}")
    for k, t in best.items():
        print(f"  {k:<9} {len(items) / t:8.1f} traces/s  ({t * 1000:.0f} ms)")
    ratio = best["plain"] / best["encode"]
    print(f"  encode / plain: {ratio:.2f}x")
    out = {"traces": len(items), "encode_per_s": len(items) / best["encode"], "ratio_vs_plain": ratio}
    if "baseline" in outputs:
        same = sum(a == b for a, b in zip(encoded, outputs["baseline"]))
        out["speedup_vs_baseline"] = best["baseline"] / best["encode"]
        print(f"  encode / baseline: {out['speedup_vs_baseline']:.2f}x; identical ids {same} of {len(items)}")
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--items", type=int, default=60)
    ap.add_argument("--max-length", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline", type=Path, help="folder holding thinkrm_baseline (a copy of an older tree)")
    args = ap.parse_args(argv)
    paths = sorted((args.shared / "longcot-dev").glob("*.jsonl"))
    if not paths:
        sys.exit(f"error: no longcot-dev pools under {args.shared} (pass --shared)")
    rows = [json.loads(line) for path in paths for line in path.open(encoding="utf-8")]
    from thinkrm.formatting import InputEncoder

    tokenizer = train_tokenizer([r["response"] for r in rows[:200]])
    encoders = {"encode": InputEncoder(tokenizer, max_length=args.max_length)}
    if args.baseline is not None:
        sys.path.insert(0, str(args.baseline))
        from thinkrm_baseline.formatting import InputEncoder as Baseline

        encoders["baseline"] = Baseline(tokenizer, max_length=args.max_length)
    items = [(r["prompt"], r["response"]) for r in rows]
    longest = sorted(items, key=lambda it: len(it[1]))[-args.items:]
    mixed = random.Random(0).sample(items, min(args.items, len(items)))
    print(f"best of {args.repeats} runs, interleaved; window {args.max_length} tokens")
    res = {"longest": measure("longest traces", longest, encoders, tokenizer, args.repeats),
           "mixed": measure("random traces", mixed, encoders, tokenizer, args.repeats)}
    ok = res["longest"]["ratio_vs_plain"] >= 1.0
    print(f"\ntarget encode / plain >= 1.0 on the longest traces: {'PASS' if ok else 'FAIL'}")
    return res


if __name__ == "__main__":
    main()
