"""What feeding an accelerator buys, measured without one: the `hf:` scorer and `thinkrm serve` over a stand-in
device.

On a GPU the forward pass runs on the device while the CPU is free, and tokenization (CPU) can overlap it;
on a CPU both compete for the same cores, so a CPU run cannot show the overlap. Here the model's forward is
replaced by a sleep as long as the batch's padded tokens would keep a device busy (`--device-ratio` times
this machine's measured time per token of one tokenizer batch call, default 1: device and tokenizer equally
fast, where overlap matters most; under `TOKENIZERS_PARALLELISM=false` a batch call is one core), while
tokenization, batching, the HTTP server and its client are all real. Printed, side by side in one run (best
of `--rounds`):

1. the naive loop a script would write (tokenize a batch, run it, in order) against `load_scorer("hf:DIR")`
   with its prefetching tokenizer thread (`prefetch=True`) and chunks split among `tokenizer_threads`
   (the accelerator defaults), and with one tokenizer thread;
2. the commands' way (`thinkrm score`, `bon`, `eval-pairs`: chunks of 128 items) one chunk after another,
   against `score_chunks`, which tokenizes the next chunk while one is on the model;
3. `thinkrm serve` (a subprocess, 64 client connections, one item per request) with requests tokenized
   ahead of the model (`Scorer.prepares`, the accelerator default) and without, against the scorer's own
   items/s (issue 17's target on a GPU: the server at >= 90% of the scorer).

    .venv/bin/python benchmarks/bench_device_sim.py                     # ~1 min on 2 CPU cores
    .venv/bin/python benchmarks/bench_device_sim.py --device-ratio 0.5  # a device twice as fast
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_serve import free_port, measure_server, tree_env  # noqa: E402
from gpu_check import SMALL, build_model, make_items  # noqa: E402

from thinkrm.hf_scorer import HFScorer, default_tokenizer_threads  # noqa: E402
from thinkrm.scoring import score_chunks  # noqa: E402


class StandInDevice(HFScorer):
    """An `hf:` scorer whose forward pass sleeps `seconds_per_token` per padded token (releasing the GIL, as a
    device kernel does) and returns zeros: everything before and around the device stays real."""

    def __init__(self, arg: str, *, seconds_per_token: float, **options):
        options.setdefault("tokenizer_threads", default_tokenizer_threads("accelerator"))
        super().__init__(arg, device="cpu", dtype="float32", **options)
        self.seconds_per_token = seconds_per_token

    def _forward(self, batch):
        time.sleep(batch.input_ids.numel() * self.seconds_per_token)
        return self._torch.zeros(batch.input_ids.shape[0])


_SERVE = """
import sys
sys.path.insert(0, sys.argv[1])
from bench_device_sim import StandInDevice
from thinkrm.serving import ServeConfig, serve
path, per_token, port, batch, ahead = sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
scorer = StandInDevice(path, seconds_per_token=per_token, batch_size=batch, prefetch=ahead == "1")
serve(ServeConfig(scorer="", port=port, max_batch_size=batch, log_level="error"), scorer)
"""


def serve_rate(path: Path, items, per_token: float, batch: int, ahead: bool, clients: int = 64) -> float:
    port = free_port()
    cmd = [sys.executable, "-c", _SERVE, str(ROOT / "benchmarks"), str(path), repr(per_token), str(port), str(batch),
           "1" if ahead else "0"]
    texts = [f"{p}\n{r}" for p, r in items]  # the server splits at the first newline; prompts have none
    rate, errors, _ = measure_server(cmd, port, texts, clients, tree_env(), timeout=120)
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, first: {errors[0]}")
    return rate


def naive_rate(scorer: StandInDevice, items, batch: int) -> float:
    """Tokenize a batch, run it, next batch: the device waits for every tokenization."""
    start = time.perf_counter()
    for i in range(0, len(items), batch):
        scorer.score_encoded([e.input_ids for e in scorer.encoder.encode_batch(items[i:i + batch])])
    return len(items) / (time.perf_counter() - start)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device-ratio", type=float, default=1.0,
                    help="device time per token / this machine's tokenization time per token")
    ap.add_argument("--items", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=4000,
                    help="about this many tokens per item (long, so the HTTP work per request, on the same "
                         "cores here, stays small beside the model's)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rm"
        build_model(path, SMALL, positions=max(4096, 2 * args.tokens))
        items = make_items(args.items, args.tokens)
        probe = StandInDevice(str(path), seconds_per_token=0.0)
        start = time.perf_counter()
        tokens = sum(len(e.input_ids) for e in probe.encoder.encode_batch(items))
        per_token = (time.perf_counter() - start) / tokens * args.device_ratio
        print(f"{len(items)} items, {tokens / len(items):.0f} tokens each on average | tokenization "
              f"{tokens / (time.perf_counter() - start) / 1000:.0f}k tokens/s here | stand-in device "
              f"{per_token * 1e6:.2f} us per padded token (ratio {args.device_ratio}) | batch {args.batch_size}")
        scorer = StandInDevice(str(path), seconds_per_token=per_token, batch_size=args.batch_size,
                               prefetch=True, chunk_size=4 * args.batch_size)
        one_thread = StandInDevice(str(path), seconds_per_token=per_token, batch_size=args.batch_size,
                                   prefetch=True, chunk_size=4 * args.batch_size, tokenizer_threads=1)
        rates: dict[str, list[float]] = {"naive": [], "scorer": [], "scorer, 1 tokenizer thread": [],
                                         "chunks of 128, one by one": [], "chunks of 128, score_chunks": [],
                                         "serve": [], "serve, no prepare": []}
        chunks = [items[i:i + 128] for i in range(0, len(items), 128)]  # as `thinkrm score` calls a scorer
        for _ in range(args.rounds):
            rates["naive"].append(naive_rate(scorer, items, args.batch_size))
            for name, s in (("scorer", scorer), ("scorer, 1 tokenizer thread", one_thread)):
                start = time.perf_counter()
                s.score(items)
                rates[name].append(len(items) / (time.perf_counter() - start))
            start = time.perf_counter()
            for chunk in chunks:
                scorer.score(chunk)
            rates["chunks of 128, one by one"].append(len(items) / (time.perf_counter() - start))
            start = time.perf_counter()
            for _ in score_chunks(scorer, chunks, list):
                pass
            rates["chunks of 128, score_chunks"].append(len(items) / (time.perf_counter() - start))
            rates["serve"].append(serve_rate(path, items, per_token, args.batch_size, ahead=True))
            rates["serve, no prepare"].append(serve_rate(path, items, per_token, args.batch_size, ahead=False))
        best = {k: max(v) for k, v in rates.items()}
        for k, v in rates.items():
            print(f"{k:28s} {best[k]:8.1f} items/s  (rounds: {', '.join(f'{x:.1f}' for x in v)})")
        print(f"chunks of 128: score_chunks / one by one "
              f"{best['chunks of 128, score_chunks'] / best['chunks of 128, one by one']:.2f}x")
        print(f"scorer / naive {best['scorer'] / best['naive']:.2f}x | serve / scorer "
              f"{best['serve'] / best['scorer']:.2f} (target >= 0.9) | without prepare "
              f"{best['serve, no prepare'] / best['scorer']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
