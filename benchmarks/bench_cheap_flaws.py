"""The cheap flaws (issue 15): does a scorer prefer a correct trace over the same trace with one step repeated,
removed, or with one operator swapped?

    python benchmarks/bench_cheap_flaws.py [--scorer lite] [--scorer length ...] [--heldout split.json]

ReasonEval-style perturbations of the correct candidates of the problems held out of TRM-lite training
(MATH-500 and the long-trace AMC23 / Minerva pools; `--heldout` names a checkpoint's split.json, default the
recipe's seed-0 split). For every trace with at least three paragraphs, one middle paragraph (never the first
or the last, which states the answer) is
* `repeated`: copied right after itself, word for word;
* `removed`: deleted (a needed derivation silently dropped);
* `swapped`: one `+`, `-`, `*` or `/` between two numbers replaced by another (a wrong calculation).
Accuracy = the share of pairs where the original scores strictly higher, next to "shorter wins" (a tie is
wrong). Target: `repeated` at 100% for TRM-lite (a repeated step must always cost score); `removed` above 50%.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

POOLS = ("skythought-math500", "amc23", "minerva")
_OP = re.compile(r"(?<=\d) ?([+\-*/]) ?(?=\d)")
_SWAP = {"+": "-", "-": "+", "*": "/", "/": "*"}


def perturbations(reasoning: str, rng: random.Random) -> dict[str, str]:
    paras = reasoning.split("\n\n")
    middle = [i for i in range(1, len(paras) - 1) if len(paras[i].strip()) >= 12]
    if not middle:
        return {}
    i = rng.choice(middle)
    out = {"repeated": "\n\n".join(paras[:i + 1] + [paras[i]] + paras[i + 1:]),
           "removed": "\n\n".join(paras[:i] + paras[i + 1:])}
    ops = [(j, m) for j in middle for m in _OP.finditer(paras[j])]
    if ops:
        j, m = rng.choice(ops)
        p = paras[j]
        swapped = p[:m.start(1)] + _SWAP[m.group(1)] + p[m.end(1):]
        out["swapped"] = "\n\n".join(paras[:j] + [swapped] + paras[j + 1:])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scorer", action="append")
    parser.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--heldout", type=Path, default=None)
    parser.add_argument("--per-pool", type=int, default=150, help="traces perturbed per pool (seeded sample)")
    args = parser.parse_args()

    from thinkrm.bon import load_candidates
    from thinkrm.lite.recipe import POOLS as FILES
    from thinkrm.lite.recipe import held_out_problems
    from thinkrm.scoring import load_scorer

    split = json.loads(args.heldout.read_text()) if args.heldout else None
    rng = random.Random(0)
    pairs: list[tuple[str, str, str, str]] = []  # (kind, prompt, original, perturbed)
    for name in POOLS:
        path = Path(args.shared) / FILES[name]
        if not path.is_file():
            print(f"skip {name}: {path} not found")
            continue
        cands = load_candidates(path)
        held = held_out_problems(name, cands, split)
        good = [c for c in cands if c.correct and c.problem_id in held and c.reasoning.strip()]
        for c in rng.sample(good, min(args.per_pool, len(good))):
            for kind, text in perturbations(c.reasoning, rng).items():
                pairs.append((kind, c.prompt, c.reasoning, text))
    kinds = sorted({k for k, *_ in pairs})
    print(f"{len(pairs)} pairs: " + ", ".join(f"{k} {sum(p[0] == k for p in pairs)}" for k in kinds))
    for spec in args.scorer or ["lite"]:
        scorer = load_scorer(spec)
        a = scorer.score([(p, o) for _, p, o, _ in pairs])
        b = scorer.score([(p, x) for _, p, _, x in pairs])
        cells = []
        for k in kinds:
            idx = [i for i, p in enumerate(pairs) if p[0] == k]
            acc = sum(a[i] > b[i] for i in idx) / len(idx)
            short = sum(len(pairs[i][2]) < len(pairs[i][3]) for i in idx) / len(idx)
            cells.append(f"{k} {acc:.1%} (shorter wins {short:.1%})")
        print(f"{spec}: " + "; ".join(cells))


if __name__ == "__main__":
    main()
