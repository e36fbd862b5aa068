"""Calls and tokens per trace of the two LLM structurers, `llm` (per step) and `llm-batch`, on the same traces.

An oracle OpenAI-compatible server on 127.0.0.1 answers every request validly (per step: a 25-word explanation
and `<|action|>continue`; batch: the JSON labels), so both modes do their normal amount of work and no model
quality enters the comparison. Tokens are counted by the server with a real WordPiece tokenizer
(all-MiniLM-L6-v2's), over the request's message contents and the reply.

    python benchmarks/bench_llm_structure.py [--shared ../shared/data] [--traces 20]

Traces: the first correct responses of ../shared/data/skythought-math500/candidates.jsonl with >= 8 steps
(`--min-steps`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from scripted_llm import Reply, ScriptedServer  # noqa: E402

from thinkrm.dag import build_dag  # noqa: E402
from thinkrm.embed import model_path  # noqa: E402
from thinkrm.llm import LLMConfig  # noqa: E402
from thinkrm.llm import prompts as P  # noqa: E402
from thinkrm.llm.structuring import BatchLLMStructurer, LLMStructurer  # noqa: E402
from thinkrm.steps import split_steps  # noqa: E402
from thinkrm.trace import split_response  # noqa: E402

EXPLANATION = ("The current step carries on the same computation as the previous main-path step, using its "
               "result directly, so it simply continues the line of reasoning.")


def load_traces(shared: Path, n: int, min_steps: int) -> list[tuple[str, str]]:
    out = []
    with open(shared / "skythought-math500" / "candidates.jsonl") as f:
        for line in f:
            r = json.loads(line)
            reasoning = split_response(r["response"])[0]
            if r.get("correct") and len(split_steps(reasoning)) >= min_steps:
                out.append((r["prompt"], reasoning))
            if len(out) == n:
                break
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--traces", type=int, default=20)
    ap.add_argument("--min-steps", type=int, default=8)
    args = ap.parse_args()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path())
    tok.model_max_length = 10**9  # counting only, never fed to the model
    count = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731

    def oracle(body, n):
        if body["messages"][0]["content"] == P.STEP_SYSTEM:
            text = f"{EXPLANATION}\n<|action|>continue\n<|previous|>"
        else:
            todo = body["messages"][-1]["content"].split("Label these steps:")[1]
            ids = [int(i) for i in re.findall(r"\[step (\d+)\]", todo)]
            text = json.dumps({"steps": [{"id": i, "action": "continue", "previous": []} for i in ids]})
        return Reply(text, usage=(sum(count(m["content"]) for m in body["messages"]), count(text)))

    traces = load_traces(args.shared, args.traces, args.min_steps)
    steps = sum(len(split_steps(t)) for _, t in traces)
    print(f"{len(traces)} traces, {steps / len(traces):.1f} steps per trace on average")
    rows = {}
    with ScriptedServer(oracle) as srv:
        for mode, cls in (("llm", LLMStructurer), ("llm-batch", BatchLLMStructurer)):
            s = cls(config=LLMConfig(base_url=srv.url, model="oracle", concurrency=8))
            t0 = time.perf_counter()
            for prompt, text in traces:
                build_dag(text, s, prompt=prompt)
            u = s.usage["structure"]
            s.close()
            n = len(traces)
            rows[mode] = (u.calls / n, u.prompt_tokens / n, u.completion_tokens / n, time.perf_counter() - t0)
    print(f"{'mode':<10} {'calls/trace':>12} {'prompt tok/trace':>17} {'completion tok/trace':>21} {'total/trace':>12}")
    for mode, (c, p, q, _) in rows.items():
        print(f"{mode:<10} {c:>12.1f} {p:>17.0f} {q:>21.0f} {p + q:>12.0f}")
    (c1, p1, q1, _), (c2, p2, q2, _) = rows["llm"], rows["llm-batch"]
    print(f"ratio llm / llm-batch: calls {c1 / c2:.1f}x, tokens {(p1 + q1) / (p2 + q2):.1f}x")


if __name__ == "__main__":
    main()
