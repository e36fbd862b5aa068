"""The training recipe: which pairs TRM-lite learns from, which problems stay held out, how sources weigh.

Every source is split by problem (the unit a Best-of-N or RL user meets), so no held-out number is measured on a
problem whose traces were trained on.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..formatting import Item
from ..io import InputError
from .config import LiteConfig
from .features import segments

if TYPE_CHECKING:
    from ..bon import Candidate
    from ..pairs import Pair


PRM_PAIRS = Path("prmbench-train") / "pairs.jsonl"
POOLS = {"skythought-math500": Path("skythought-math500") / "candidates.jsonl",
         "gsm8k": Path("gsm8k-candidates") / "dev.jsonl",
         # Cross-model pools of long thinking traces (R1-style, 20k-60k characters, many cut off or looping):
         # the traces Best-of-N and RL on thinking models meet, which short solutions do not teach.
         "amc23": Path("longcot-dev") / "amc23.jsonl",
         "minerva": Path("longcot-dev") / "minerva.jsonl"}
LONG_POOLS = ("amc23", "minerva")
PRM_TEST_FRACTION = 0.2
POOL_TEST_FRACTION = 0.5
OPS_PER_TRACE = 2  # perturbations kept per correct candidate, so no single trace dominates
# Segments a perturbed trace may have after its edit (an edit adds up to four, so traces of at most 12 are
# perturbed): the encoder then embeds every segment, the edited ones included, and the flaw is never between
# the selected ones. Not the encoder's full `max_segments`: that adds long MATH-500 traces to a source of
# fixed weight, no better anywhere on the validation split, and 0.4 points worse on PRMBench, 1.0 on its
# length-matched pairs (docs/trm-lite.md, round 5).
PERTURB_MAX_SEGMENTS = 16
# (correct, incorrect) candidate pairs per training problem. The long-trace pools have few problems with many
# runs each (AMC23: 20 training problems x 16 runs), so they give more pairs per problem.
VERIFIED_PAIRS_PER_PROBLEM = 4
VERIFIED_PAIRS_PER_LONG_PROBLEM = 24
# The calibration reference set: correct candidates of the training problems of the pools whose traces look
# like what RL shapes (multi-model, multi-paragraph competition math). GSM8K's one-line solutions score
# higher; mixing the two levels inflated the scale by half and shrank the reward spread on held-out MATH-500
# (IQR 0.031 vs 0.05 wanted, docs/bon-and-rl.md). A few per problem, so easy problems (many correct
# candidates) do not set the centre alone.
CALIBRATION_POOLS = ("skythought-math500",)
CALIBRATION_PER_PROBLEM = 2


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def split_groups(groups: Iterable[str], test_fraction: float, seed: int) -> set[str]:
    """The held-out groups (problems): a seeded shuffle of the sorted distinct ids, so it is reproducible."""
    ids = sorted(set(groups))
    random.Random(seed).shuffle(ids)
    return set(ids[:round(len(ids) * test_fraction)])


def held_out_problems(name: str, candidates: Iterable[Candidate], split: dict[str, Any] | None = None,
                      seed: int = 0) -> set[str]:
    """The problem ids of pool `name` held out of training: those a checkpoint's `split` (its split.json)
    lists, else the recipe's own split for `seed`, the one `build_dataset` makes."""
    if split is not None:
        return set(split[f"{name}_test_problem_ids"])
    return split_groups((c.problem_id for c in candidates), POOL_TEST_FRACTION, seed)


def _tag(pair: Pair, group: str, source: str) -> Pair:
    """Remember the problem a pair belongs to (the unit of the split) and its data source (for weighting)."""
    pair.extra["group"], pair.extra["source"] = group, source
    return pair


def perturbation_pairs(candidates: Sequence[Candidate], name: str, seed: int, max_segments: int) -> list[Pair]:
    """ME² perturbation pairs of the correct `candidates`.

    Traces too long for every segment to be embedded are left out: their flaw would often fall between the
    selected segments, teaching the segment encoder noise.
    """
    from ..pairs import pair_from_record
    from ..perturb import perturb_records
    from ..trace import Trace

    traces = [Trace(id=f"{name}:{i}", prompt=c.prompt, reasoning=c.reasoning, response=c.response,
                    extra={"problem_id": c.problem_id, "correct": c.correct})
              for i, c in enumerate(candidates) if c.correct]
    traces = [t for t in traces if len(segments(t.reasoning)) + 4 <= max_segments]
    records: dict[str, list[dict[str, Any]]] = {}
    for r in perturb_records(traces, seed=seed):
        records.setdefault(r["source_id"], []).append(r)
    rng = random.Random(seed)
    return [_tag(pair_from_record(r, default_id=r["id"]), f"{name}:{r['problem_id']}", f"perturb:{name}")
            for recs in records.values() for r in rng.sample(recs, min(OPS_PER_TRACE, len(recs)))]


def verified_pairs(candidates: Sequence[Candidate], name: str, seed: int) -> list[Pair]:
    """Pairs of a correct and an incorrect candidate to the same problem (graded by the pool's source).

    Perturbations teach what a worse *process* looks like; these teach which finished traces tend to end
    right, the signal Best-of-N needs. Both come only from training problems.
    """
    from ..pairs import Pair

    by_problem: dict[str, list[Candidate]] = {}
    for c in candidates:
        by_problem.setdefault(c.problem_id, []).append(c)
    rng = random.Random(seed)
    out = []
    for pid in sorted(by_problem):
        good = [c for c in by_problem[pid] if c.correct and c.reasoning.strip()]
        bad = [c for c in by_problem[pid] if c.correct is False and c.reasoning.strip()]
        combos = [(g, b) for g in good for b in bad if g.reasoning != b.reasoning]
        per_problem = VERIFIED_PAIRS_PER_LONG_PROBLEM if name in LONG_POOLS else VERIFIED_PAIRS_PER_PROBLEM
        for g, b in rng.sample(combos, min(per_problem, len(combos))):
            out.append(_tag(Pair(f"{name}:{pid}:{len(out)}", g.prompt, g.reasoning, b.reasoning, kind="verified"),
                            f"{name}:{pid}", f"verified:{name}"))
    return out


@dataclass
class Dataset:
    train: list[Pair]
    test: list[Pair]  # held-out PRMBench problems (and held-out groups of user pairs)
    pools: dict[str, list[Candidate]]  # Best-of-N candidates of the held-out problems
    split: dict[str, Any]  # what is held out, recorded next to the weights
    hashes: dict[str, str]  # sha256 of every data file read


def build_dataset(pairs_path: str | None, shared_dir: str | None, seed: int, config: LiteConfig) -> Dataset:
    """The training recipe. With `shared_dir`: PRMBench pairs of 80% of its problems, plus ME² perturbations
    of the correct candidates and (correct, incorrect) candidate pairs of half of each Best-of-N pool's
    problems; the other problems are held out.
    `pairs_path` adds the user's pairs (grouped by `problem_id`, else prompt; 10% of groups held out)."""
    from ..bon import load_candidates
    from ..pairs import load_pairs

    train: list[Pair] = []
    test: list[Pair] = []
    pools: dict[str, list[Candidate]] = {}
    split: dict[str, Any] = {"seed": seed}
    hashes: dict[str, str] = {}
    if shared_dir is None and pairs_path is None:
        raise ValueError("TRM-lite needs training data: --shared DIR (../shared/data) and/or a pairs file")
    if shared_dir is not None:
        shared = Path(shared_dir)
        prm_file = shared / PRM_PAIRS
        if not prm_file.is_file():
            raise InputError("PRMBench pairs not found (is --shared the shared data directory?)", file=prm_file)
        hashes[str(PRM_PAIRS)] = file_sha256(prm_file)
        bad: list[InputError] = []  # PRMBench has rows whose flawed side equals the original: unusable
        prm = [_tag(p, p.id, "prmbench") for p in load_pairs(prm_file, skip_bad=True, on_bad=bad.append)]
        split["prmbench_skipped_rows"] = [str(e) for e in bad]
        held = split_groups((p.id for p in prm), PRM_TEST_FRACTION, seed)
        split["prmbench_test_ids"] = sorted(held)
        train += [p for p in prm if p.id not in held]
        test += [p for p in prm if p.id in held]
        for name, rel in POOLS.items():
            path = shared / rel
            if not path.is_file():
                raise InputError("candidate pool not found", file=path)
            hashes[str(rel)] = file_sha256(path)
            cands = load_candidates(path)
            held_pool = held_out_problems(name, cands, seed=seed)
            split[f"{name}_test_problem_ids"] = sorted(held_pool)
            pools[name] = [c for c in cands if c.problem_id in held_pool]
            train_cands = [c for c in cands if c.problem_id not in held_pool]
            limit = min(PERTURB_MAX_SEGMENTS, config.max_segments)
            train += perturbation_pairs(train_cands, name, seed, limit)
            train += verified_pairs(train_cands, name, seed)
    if pairs_path is not None:
        user = [_tag(p, str(p.extra.get("problem_id", p.prompt)), "user") for p in load_pairs(pairs_path)]
        hashes[Path(pairs_path).name] = file_sha256(pairs_path)
        held = split_groups((p.extra["group"] for p in user), 0.1, seed)
        split["user_test_groups"] = sorted(held)
        train += [p for p in user if p.extra["group"] not in held]
        test += [p for p in user if p.extra["group"] in held]
    return Dataset(train, test, pools, split, hashes)


def pair_rows(pairs: Sequence[Pair]) -> tuple[list[Item], np.ndarray]:
    """Distinct (prompt, reasoning) items and, per pair, the rows of its chosen and rejected sides."""
    row: dict[Item, int] = {}
    idx = np.zeros((len(pairs), 2), dtype=np.int64)
    for i, p in enumerate(pairs):
        for j, text in enumerate((p.chosen, p.rejected)):
            idx[i, j] = row.setdefault(Item(p.prompt, text), len(row))
    return list(row), idx


# Relative total weight of each kind of data source. Perturbations get less: alone they mostly teach
# "added text is worse", which the ablations (docs/trm-lite.md) show pulls the model towards a length detector.
# The long-trace pools get less than a full pool's share: at 0.35 each, PRMBench's part of the total fell from
# half to a third and its held-out accuracy by 1.1 points (two kinds dropped below "shorter wins"), with no
# gain on long-trace validation problems (docs/trm-lite.md, round 6).
SOURCE_SHARE = {"prmbench": 1.0, "verified": 0.35, "perturb": 0.1, "user": 1.0,
                "verified:amc23": 0.2, "verified:minerva": 0.2, "perturb:amc23": 0.05, "perturb:minerva": 0.05}


def source_weights(pairs: Sequence[Pair]) -> np.ndarray:
    """Each data source contributes a fixed total weight (`SOURCE_SHARE` of its kind), however many pairs it
    has, so thousands of cheap perturbations do not drown the real PRMBench pairs (and vice versa)."""
    sources = [p.extra["source"] for p in pairs]
    counts = {s: sources.count(s) for s in set(sources)}
    share = {s: SOURCE_SHARE.get(s, SOURCE_SHARE.get(s.split(":")[0], 1.0)) for s in counts}
    total = sum(share.values())
    return np.array([len(pairs) * share[s] / (total * counts[s]) for s in sources], dtype=np.float64)


def calibration_items(shared_dir: str | os.PathLike, split: dict[str, Any], seed: int = 0) -> list[Item]:
    """The calibration reference set: up to `CALIBRATION_PER_PROBLEM` correct candidates of every *training*
    problem of the `CALIBRATION_POOLS` (the held-out half stays unseen, for the RL-reward benchmark)."""
    from ..bon import load_candidates

    rng = random.Random(seed)
    items: list[Item] = []
    for name in CALIBRATION_POOLS:
        rel = POOLS[name]
        held = set(split.get(f"{name}_test_problem_ids", ()))
        by_problem: dict[str, list[Candidate]] = {}
        for c in load_candidates(Path(shared_dir) / rel):
            if c.correct and c.problem_id not in held and c.reasoning.strip():
                by_problem.setdefault(c.problem_id, []).append(c)
        for pid in sorted(by_problem):
            chosen = rng.sample(by_problem[pid], min(CALIBRATION_PER_PROBLEM, len(by_problem[pid])))
            items += [Item(c.prompt, c.reasoning) for c in chosen]
    return items
