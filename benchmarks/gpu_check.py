"""GPU check of the `hf:` scorer, offline: throughput, batched-vs-single scores, serving, tests.

Nothing comes from the network. A random-init Llama sequence classifier (~150M parameters, bf16 on CUDA)
and a byte-level BPE tokenizer trained locally (`tests/tiny_models.py`) are written to a temporary
directory, then, in one process and side by side:

1. items/s of `load_scorer("hf:DIR")` against the naive loop a script would write
   (`model(**tokenizer(batch, padding=True))` over the items in order), at the same batch size;
2. max |score difference| between batched scoring and one item at a time (same scorer), and between the
   scorer and the naive loop;
3. items/s of `thinkrm serve --scorer hf:DIR` on 127.0.0.1 under 64 client connections (one item per
   request), against the scorer's own items/s, and its start-up (seconds to /health) against a fresh
   process that loads the scorer and scores one item;
4. `pytest -q -x tests/test_hf_scorer.py tests/test_train.py`, result line printed.

    python benchmarks/gpu_check.py                 # GPU: 512 items of ~2,000 tokens, ~150M model, < 8 min
    python benchmarks/gpu_check.py --cpu --small   # CPU smoke run of the same steps, about a minute

A bare CUDA PyTorch image lacks the server stack, TRL and datasets: `bash benchmarks/gpu_wheels.sh` fetches
their wheels here into `.whl/` (6.5 MB), to carry along and install there first, as that script says.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))  # the tokenizer the tests train, reused rather than copied

sys.path.insert(0, str(ROOT / "benchmarks"))  # the server helpers bench_serve.py already has

from bench_serve import free_port, measure_server, serve_command, tree_env  # noqa: E402
from tiny_models import CORPUS, make_tokenizer  # noqa: E402

FULL = dict(hidden=1024, layers=12, heads=16, intermediate=2816, items=512, tokens=2000, batch=32,
            single=64, requests=512)
SMALL = dict(hidden=64, layers=2, heads=2, intermediate=128, items=96, tokens=400, batch=16,
             single=16, requests=96)


def build_model(path: Path, cfg: dict, positions: int) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    tok = make_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=cfg["hidden"], intermediate_size=cfg["intermediate"],
                         num_hidden_layers=cfg["layers"], num_attention_heads=cfg["heads"],
                         num_key_value_heads=cfg["heads"], max_position_embeddings=positions,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=False, num_labels=1)
    model = LlamaForSequenceClassification(config)
    with torch.no_grad():  # a visible score spread, so differences are measured on realistic magnitudes
        model.score.weight.normal_(0, 1.0 / cfg["hidden"] ** 0.5)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def make_items(n: int, tokens: int, seed: int = 0) -> list[tuple[str, str]]:
    """Items of about `tokens` tokens (between 0.75x and 1.25x), mixed so length sorting matters."""
    tok = make_tokenizer()
    per_sentence = sum(len(tok(s, add_special_tokens=False)["input_ids"]) for s in CORPUS) / len(CORPUS)
    rng = random.Random(seed)
    items = []
    for i in range(n):
        k = max(1, int(tokens * rng.uniform(0.75, 1.25) / per_sentence))
        items.append((f"Problem {i}: what is {i} + {i}?", " ".join(rng.choice(CORPUS) for _ in range(k))))
    return items


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def naive(path: Path, items, batch: int, device: str, dtype) -> tuple[float, list[float]]:
    """What a script would do: tokenizer on a batch, padded, forward, in input order."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from thinkrm.formatting import format_input

    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "right"
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype).to(device).eval()
    texts = [format_input(p, r) for p, r in items]
    out: list[float] = []

    def run(ts):
        with torch.inference_mode():
            enc = tok(ts, padding=True, truncation=True, max_length=model.config.max_position_embeddings,
                      return_tensors="pt").to(device)
            return model(**enc).logits[:, 0].float().cpu().tolist()

    run(texts[:2])  # warm-up
    sync(device)
    start = time.perf_counter()
    for i in range(0, len(texts), batch):
        out += run(texts[i:i + batch])
    sync(device)
    rate = len(texts) / (time.perf_counter() - start)
    return rate, out


def scorer_rate(scorer, items, device: str) -> tuple[float, list[float]]:
    scorer.score(items[:2])  # warm-up
    sync(device)
    start = time.perf_counter()
    scores = scorer.score(items)
    sync(device)
    return len(items) / (time.perf_counter() - start), scores


def serve_rate(path: Path, items, args, clients: int = 64) -> tuple[float, int, float]:
    """(items/s, errors, seconds to start) of `thinkrm serve --scorer hf:DIR` under `clients` connections,
    one item per request. The load comes from bench_serve's asyncio client (raw HTTP/1.1 keep-alive): 64
    httpx threads in this process would spend more CPU per request than the server does, and measure
    themselves."""
    port = free_port()
    env = tree_env(CUDA_VISIBLE_DEVICES="") if args.cpu else tree_env()
    cmd = serve_command("--scorer", f"hf:{path}", "--port", str(port), "--max-batch-size", str(args.batch_size))
    texts = [f"{p}\n{r}" for p, r in items]  # the server splits at the first newline; these prompts have none
    rate, errors, startup = measure_server(cmd, port, texts, clients, env)
    return rate, len(errors), startup


_LOAD = """
import sys, time
t = time.perf_counter()
from thinkrm.scoring import load_scorer
load_scorer(sys.argv[1], device=sys.argv[2], dtype=sys.argv[3]).score([("What is 2 + 3?", "5")])
print(time.perf_counter() - t)
"""


def load_seconds(path: Path, device: str, dtype: str) -> float:
    """Seconds a fresh process takes to import thinkrm, load `hf:path` and score one item: what starting a
    server cannot avoid, against which its start-up is measured (both include the interpreter's start)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", _LOAD, f"hf:{path}", device, dtype], env=tree_env(), check=True,
                   capture_output=True)
    return time.perf_counter() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu", action="store_true", help="run on the CPU in float32 (no GPU needed)")
    ap.add_argument("--small", action="store_true", help="a tiny model and short items (about a minute on CPU)")
    ap.add_argument("--items", type=int)
    ap.add_argument("--tokens", type=int, help="about this many tokens per item")
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--no-serve", action="store_true")
    ap.add_argument("--no-tests", action="store_true")
    args = ap.parse_args()
    cfg = dict(SMALL if args.small else FULL)
    for k in ("items", "tokens"):
        if getattr(args, k):
            cfg[k] = getattr(args, k)
    args.batch_size = args.batch_size or cfg["batch"]
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    from thinkrm.scoring import load_scorer

    device = "cpu" if args.cpu else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" and not args.cpu:
        print("no CUDA device: running on the CPU (pass --cpu --small for the quick CPU check)")
    dtype_name = "float32" if device == "cpu" else "bfloat16"
    dtype = getattr(torch, dtype_name)
    positions = max(4096, 2 * cfg["tokens"])
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rm"
        params = build_model(path, cfg, positions)
        items = make_items(cfg["items"], cfg["tokens"])
        print(f"device {device} {dtype_name} | model {params / 1e6:.1f}M params | {len(items)} items, "
              f"~{cfg['tokens']} tokens each | batch {args.batch_size} | torch {torch.__version__}")

        scorer = load_scorer(f"hf:{path}", device=device, dtype=dtype_name, batch_size=args.batch_size)
        lengths = [len(e.input_ids) for e in scorer.encoder.encode_batch(items)]
        print(f"tokens per item: min {min(lengths)} mean {sum(lengths) / len(lengths):.0f} max {max(lengths)}; "
              f"max_batch_tokens {scorer.max_batch_tokens}, fp32 head {scorer._head is not None}")
        # Alternate, best of two each: the machine may be shared.
        naive_rates, scorer_rates = [], []
        for _ in range(2):
            r, naive_scores = naive(path, items, args.batch_size, device, dtype)
            naive_rates.append(r)
            r, scores = scorer_rate(scorer, items, device)
            scorer_rates.append(r)
        sr, nr = max(scorer_rates), max(naive_rates)
        print(f"[throughput] scorer {sr:.1f} items/s | naive tokenizer+forward loop {nr:.1f} items/s | "
              f"x{sr / nr:.2f}  (runs: scorer {', '.join(f'{x:.1f}' for x in scorer_rates)}; "
              f"naive {', '.join(f'{x:.1f}' for x in naive_rates)})")

        few = items[:cfg["single"]]
        single = [scorer.score([it])[0] for it in few]
        batched = scorer.score(few)
        diff = max(abs(a - b) for a, b in zip(batched, single))
        vs_naive = max(abs(a - b) for a, b in zip(scores, naive_scores))
        spread = max(scores) - min(scores)
        print(f"[consistency] max |batched - single| {diff:.2e} over {len(few)} items | "
              f"max |scorer - naive| {vs_naive:.2e} | score range {spread:.3f}")
        scorer.close()
        del scorer
        if device.startswith("cuda"):
            torch.cuda.empty_cache()

        if not args.no_serve:
            # A machine may lack the server stack (benchmarks/gpu_wheels.sh): that step fails, the rest runs.
            try:
                rate, errors, startup = serve_rate(path, items[:cfg["requests"]], args)
                print(f"[serve] {rate:.1f} items/s with 64 clients, one item per request, {errors} errors "
                      f"| scorer in-process {sr:.1f} items/s | ratio {rate / sr:.2f}")
                load_s = load_seconds(path, device, dtype_name)
                print(f"[startup] serve to /health {startup:.1f} s | fresh process: load + score one item "
                      f"{load_s:.1f} s | ratio {startup / load_s:.2f}")
            except Exception as e:  # noqa: BLE001 - reported, and the check goes on
                print(f"[serve] failed: {type(e).__name__}: {str(e)[-1500:]}")

    if not args.no_tests:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                               "tests/test_hf_scorer.py", "tests/test_train.py"],
                              cwd=ROOT, env=tree_env(), capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
        print(f"[pytest] {lines[-1] if lines else proc.stderr[-500:]} (exit {proc.returncode})")
        if proc.returncode:
            print("\n".join(lines[-40:]))
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
