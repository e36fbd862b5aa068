"""TRM-lite: the shipped model loads offline, scores deterministically and sensibly, and trains reproducibly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from thinkrm.formatting import Item
from thinkrm.io import InputError
from thinkrm.lite import (
    DEFAULT_DIR,
    Embedder,
    LiteConfig,
    LiteModel,
    LiteScorer,
    segments,
    select,
    source_weights,
    train_lite,
)
from thinkrm.lite.recipe import split_groups
from thinkrm.scoring import load_scorer
from thinkrm.trace import load_traces

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "traces.jsonl"


@pytest.fixture(scope="module")
def scorer() -> LiteScorer:
    return load_scorer("lite")


def test_select_keeps_ends_and_spreads_evenly():
    assert select(3, 16) == [0, 1, 2]
    picked = select(100, 16)
    assert len(picked) == 16 and picked[0] == 0 and picked[-1] == 99 and picked == sorted(set(picked))
    assert max(np.diff(picked)) <= 2 * 99 / 15 + 1
    # Fewer segments read a subset of the same segments, so a checkpoint can run faster on what it saw.
    for n in (17, 50, 1000):
        assert set(select(n, 8)) <= set(select(n, 16))


def test_segments_are_the_paragraphs_or_lines():
    assert segments("First we add.\n\nWait, check it.\n\n\nSo 4.") == ["First we add.", "Wait, check it.", "So 4."]
    lines = segments("We have 3x + 7 = 22, so we subtract seven from both sides\nThat leaves 3x = 15, and then we "
                     "divide both sides by three\nWhich gives x = 5, and that is the final value here")
    assert len(lines) == 3
    assert segments("   ") == []


def test_shipped_model_is_small_and_loads_offline(scorer):
    size = sum(f.stat().st_size for f in DEFAULT_DIR.iterdir())
    assert size < 10 * 2**20
    assert (DEFAULT_DIR / "MODEL_CARD.md").is_file()
    assert scorer.spec == "lite" and isinstance(scorer, LiteScorer)


def test_scores_are_deterministic_and_batch_independent(scorer):
    traces = list(load_traces(EXAMPLES))
    items = [Item(t.prompt, t.reasoning) for t in traces]
    a = scorer.score(items)
    b = scorer.score(items)
    assert a == b
    alone = [scorer.score([it])[0] for it in items[:3]]
    assert np.allclose(alone, a[:3], atol=1e-4)
    assert len(set(np.round(a, 6))) > 1, "different traces must not all score the same"
    assert scorer.score([]) == []


def test_shipped_model_prefers_the_clean_trace_on_the_examples(scorer):
    traces = list(load_traces(EXAMPLES))
    scores = dict(zip((t.id for t in traces), scorer.score([Item(t.prompt, t.reasoning) for t in traces])))
    pairs = 0
    for clean in (t for t in traces if t.extra["quality"] == "clean"):
        for flawed in (t for t in traces if t.extra["quality"] == "flawed" and t.prompt == clean.prompt):
            assert scores[clean.id] > scores[flawed.id], (clean.id, flawed.id)
            pairs += 1
    assert pairs >= 5


def test_empty_reasoning_scores_finite(scorer):
    s = scorer.score([("What is 2 + 2?", ""), ("What is 2 + 2?", "2 + 2 = 4.")])
    assert all(np.isfinite(s))


def test_bad_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="config.json"):
        load_scorer(f"lite:{tmp_path}")
    (tmp_path / "config.json").write_text("{broken")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(InputError, match="not a TRM-lite config"):
        LiteModel.load(tmp_path)


def test_ensemble_scores_the_mean_of_differently_seeded_heads():
    import torch

    from thinkrm.lite import Embedder, featurize
    from thinkrm.me2 import SIGNALS

    cfg = LiteConfig(max_segments=4, hidden=4, glob_hidden=4, ensemble=3, signals=list(SIGNALS))
    model = LiteModel.new(cfg, seed=7)
    traces = list(load_traces(EXAMPLES))[:4]
    f = featurize([Item(t.prompt, t.reasoning) for t in traces], cfg, Embedder())
    from thinkrm.lite.model import tensors

    with torch.inference_mode():
        heads = [m(*tensors(f)).numpy() for m in model.net.members]
    assert not np.allclose(heads[0], heads[1])  # seeds 7 and 8 start apart
    assert np.allclose(model.score_features(f), np.mean(heads, 0), atol=1e-6)
    again = LiteModel.new(cfg, seed=7)
    assert np.array_equal(again.score_features(f), model.score_features(f))


def test_grounding_counts_terms_said_anywhere_before():
    from thinkrm.lite.features import SEGMENT_FEATURES, parse

    reasoning = ("The box holds 12 apples.\n\nSo the box holds 12 apples.\n\nEach apple weighs 150 grams.\n\n"
                 "Then 12 apples weigh 1800 grams.")
    texts, x, _ = parse(Item("A box holds 12 apples.", reasoning), LiteConfig(max_segments=2, use_structure=False))
    assert texts == ["The box holds 12 apples.", "Then 12 apples weigh 1800 grams."]
    said = x[:, SEGMENT_FEATURES.index("said_before") - 3]  # the first three are the embedding similarities
    # The first paragraph only restates the prompt; the last says 12, apples and grams again (the unembedded
    # third paragraph introduced "grams") and weigh, 1800 for the first time.
    assert said.tolist() == pytest.approx([1.0, 0.6])


def test_parsed_feature_cache_is_reused_until_the_featurising_code_changes(tmp_path, monkeypatch):
    from thinkrm import lite
    from thinkrm.lite import cache as lite_cache
    from thinkrm.lite.features import parse as lite_parse

    cfg, items = LiteConfig(max_segments=4), [Item("Add 2 and 3.", "2 + 3 = 5.\n\nSo the answer is 5.")]
    calls = []

    def parse(item, config):
        calls.append(item)
        return lite_parse(item, config)

    first = lite.Embedder(tmp_path).parsed_items(items, cfg, parse)
    lite.Embedder(tmp_path).parsed_items(items, cfg, parse)  # a new process reads the shard
    assert len(calls) == 1
    monkeypatch.setattr(lite_cache, "parse_code_version", lambda: "an edited me2.py")
    again = lite.Embedder(tmp_path).parsed_items(items, cfg, parse)
    assert len(calls) == 2 and np.array_equal(again[0][2], first[0][2])


def test_parsed_cache_reads_back_what_was_parsed(tmp_path):
    from thinkrm import lite
    from thinkrm.lite.features import parse as lite_parse

    cfg = LiteConfig(max_segments=4)
    items = [Item("Add 2 and 3.", "2 + 3 = 5.\n\nSo the answer is 5."), Item("Σ?", "é ∑ \ud800 done."),
             Item("Q", "one segment")]
    fresh = lite.Embedder().parsed_items(items, cfg, lite_parse)
    lite.Embedder(tmp_path).parsed_items(items, cfg, lite_parse)
    read = lite.Embedder(tmp_path).parsed_items(items, cfg, lambda *a: pytest.fail("parsed again"))
    for (texts, pos, glob), (t2, p2, g2) in zip(fresh, read):
        assert texts == t2 and np.array_equal(pos, p2) and np.array_equal(glob, g2) and p2.dtype == np.float32


class _Payload:
    """Unpickling this makes a folder: proof that loading a cache file ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.mkdir, (self.marker,)


def test_a_planted_pickle_in_the_cache_never_runs(tmp_path):
    import pickle

    from thinkrm import lite
    from thinkrm.lite import cache as lite_cache
    from thinkrm.lite.features import parse as lite_parse

    cache, marker = tmp_path / "cache", tmp_path / "pwned"
    cache.mkdir(mode=0o700)
    # The old shard format, under the name the old code loaded, is not read at all.
    (cache / f"parsed_{lite_cache.parse_code_version()}-0.pkl").write_bytes(pickle.dumps({b"k": _Payload(marker)}))
    lite.Embedder(cache).parsed_items([Item("Q", "A.")], LiteConfig(max_segments=4), lite_parse)
    assert not marker.exists()
    # An npz whose arrays are pickled objects is refused, naming the file, without unpickling them.
    with open(cache / "emb-1.npz", "wb") as f:
        np.savez(f, keys=np.array([_Payload(marker)], dtype=object), vecs=np.zeros((1, 384)))
    with pytest.raises(InputError, match=r"emb-1.npz: not a TRM-lite cache shard .*delete the file"):
        lite.Embedder(cache)
    assert not marker.exists()


def test_the_cache_folder_is_private_to_its_user(tmp_path, monkeypatch):
    import os

    from thinkrm import lite

    monkeypatch.delenv("THINKRM_LITE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert lite.default_cache_dir() == tmp_path / "xdg" / "thinkrm" / "lite"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert lite.default_cache_dir() == tmp_path / "home" / ".cache" / "thinkrm" / "lite"
    monkeypatch.setenv("THINKRM_LITE_CACHE", str(tmp_path / "chosen"))
    assert lite.default_cache_dir() == tmp_path / "chosen"

    made = lite.Embedder(tmp_path / "home" / ".cache" / "thinkrm" / "lite").cache_dir
    assert made.is_dir() and made.stat().st_mode & 0o777 == 0o700
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # e.g. a predictable folder under /tmp that another user created first
    with pytest.raises(ValueError, match="shared: the TRM-lite cache folder is writable by other users"):
        lite.Embedder(shared)
    shared.chmod(0o700)
    me = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: me + 1)
    with pytest.raises(ValueError, match=f"belongs to another user \\(uid {me}\\)"):
        lite.Embedder(shared)


def test_invalid_config_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="invalid TRM-lite config"):
        LiteConfig(ensemble=0)
    (tmp_path / "config.json").write_text(json.dumps({"config": {"ensemble": 0}}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(InputError, match="not a TRM-lite config"):
        LiteModel.load(tmp_path)


def test_split_is_by_group_and_reproducible_and_sources_weigh_equally(monkeypatch):
    groups = [f"p{i % 50}" for i in range(400)]
    held = split_groups(groups, 0.2, seed=0)
    assert len(held) == 10 and held == split_groups(reversed(groups), 0.2, seed=0)
    assert held != split_groups(groups, 0.2, seed=1)
    from thinkrm.pairs import Pair

    pairs = [Pair(str(i), "p", "a", "b", extra={"source": "big" if i < 90 else "small"}) for i in range(100)]
    w = source_weights(pairs)
    assert w[:90].sum() == pytest.approx(w[90:].sum())
    # A pool-specific share (`verified:gsm8k`) overrides the share of its kind (`verified`).
    from thinkrm.lite import recipe as lite

    pairs = [Pair(str(i), "p", "a", "b", extra={"source": "prmbench" if i < 50 else "verified:gsm8k"})
             for i in range(100)]
    monkeypatch.setitem(lite.SOURCE_SHARE, "verified:gsm8k", 0.5)
    w = source_weights(pairs)
    assert w[50:].sum() == pytest.approx(0.5 * w[:50].sum())


@pytest.mark.slow
def test_train_lite_on_user_pairs_is_reproducible(tmp_path):
    clean = "We add the numbers: 2 + 3 = 5.\n\nSo the total is 5."
    flawed = ("We add the numbers: 2 + 3 = 6.\n\nWait, that's wrong. Let me restart.\n\nWe add the numbers: "
              "2 + 3 = 5.\n\nHmm, okay, so basically the total is 5.\n\nSo the total is 5.")
    rows = [{"prompt": f"Problem {i}: add 2 and 3.", "chosen": clean, "rejected": flawed, "problem_id": str(i)}
            for i in range(20)]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = dict(config=LiteConfig(max_segments=8, hidden=8, ensemble=2), cache_dir=tmp_path / "cache", epochs=5)
    res = train_lite(str(pairs), tmp_path / "m1", None, 0, **cfg)
    train_lite(str(pairs), tmp_path / "m2", None, 0, **cfg)
    assert (tmp_path / "m1" / "model.safetensors").read_bytes() == (tmp_path / "m2" / "model.safetensors").read_bytes()
    assert res["pairs"]["num_pairs"] == 2 and res["pairs"]["accuracy"] == 1.0
    s = load_scorer(f"lite:{tmp_path / 'm1'}")
    hi, lo = s.score([("Problem 99: add 2 and 3.", clean), ("Problem 99: add 2 and 3.", flawed)])
    assert hi > lo
    card = (tmp_path / "m1" / "MODEL_CARD.md").read_text()
    assert "pairs.jsonl" in card and "sha256" in card


@pytest.mark.slow
@pytest.mark.shared_data
def test_shipped_model_beats_length_on_held_out_prmbench(shared_data, scorer):
    split = json.loads((DEFAULT_DIR / "split.json").read_text())
    held = set(split["prmbench_test_ids"][:12])
    recs = [json.loads(line) for line in open(shared_data / "prmbench-train" / "pairs.jsonl")]
    recs = [r for r in recs if r["id"] in held]
    s = scorer.score([(r["prompt"], r[side]) for r in recs for side in ("chosen", "rejected")])
    acc = np.mean([c > r for c, r in zip(s[::2], s[1::2])])
    shorter = np.mean([len(r["chosen"]) < len(r["rejected"]) for r in recs])
    assert acc >= 0.8 and acc > shorter


def test_repeated_lines_are_dropped_keeping_the_first():
    from thinkrm.lite.features import drop_repeats

    step = "Then 12 * 7 = 84, so the product is 84."
    trace = f"We need 12 * 7.\n\n{step}\n\n{step}\n\nCheck: the product is right.\n{step}\n$$\n\n$$\nSo 84."
    kept, n = drop_repeats(trace)
    assert n == 2 and kept.count(step) == 1
    assert kept.count("$$") == 2  # short lines recur legitimately and stay
    assert drop_repeats("No repeats here at all.\n\nNone.") == ("No repeats here at all.\n\nNone.", 0)


def test_stated_answers_read_boxed_and_spoken_answers_in_order():
    from thinkrm.lite.features import stated_answers

    text = ("So the answer is 5. Wait, the answer is \\boxed{\\frac{1}{2}}. Final answer: $7$.\n"
            "The answer is 12 because x. Thus the answer is \\(3.5\\), so done. \\boxed{x^{2}")
    assert [a for _, a in stated_answers(text)] == ["5", "\\frac{1}{2}", "7", "12", "3.5"]
    assert stated_answers("no statement here") == []
    # Linear time: a pathological run of openers is read in bounded windows.
    assert len(stated_answers("\\boxed{" * 20000)) == 0


def test_trace_signals_tell_a_concluded_trace_from_a_cut_off_one():
    from thinkrm.lite.features import TRACE_SIGNALS, trace_signals

    done = dict(zip(TRACE_SIGNALS, trace_signals(
        "Let x = 3.\n\nThen 2x = 6, so the answer is 6.\n\nWait, check: 2 * 3 = 6. The answer is \\boxed{6}.")))
    cut = dict(zip(TRACE_SIGNALS, trace_signals(
        "Let x = 3.\n\nThen 2x = 5, so the answer is 5.\n\nWait, maybe the answer is 7. Hmm, let me try x = 4 and")))
    assert done["ends_cleanly"] == 1 and cut["ends_cleanly"] == 0
    assert done["log_answer_changes"] == 0 < cut["log_answer_changes"]
    assert done["states_answer"] == cut["states_answer"] == 1
    assert done["log_distinct_answers"] < cut["log_distinct_answers"]
    assert done["after_final_answer"] > 0 and done["concluded"] == 1


def test_a_repeated_step_always_costs_score(scorer):
    # A copy of a step right after itself is read as the trace without it, minus a penalty whose weight is
    # positive by construction: every trace, every step, strictly lower.
    traces = list(load_traces(EXAMPLES))[:4]
    items, copies = [], []
    for t in traces:
        paras = t.reasoning.split("\n\n")
        for i, p in enumerate(paras):
            if len(p.strip()) >= 12:
                items.append(Item(t.prompt, t.reasoning))
                copies.append(Item(t.prompt, "\n\n".join(paras[:i + 1] + [p] + paras[i + 1:])))
    assert len(items) >= 10
    before, after = scorer.score(items), scorer.score(copies)
    assert all(a < b for a, b in zip(after, before))


def test_checkpoints_saved_before_long_trace_reading_load_as_version_1(tmp_path):
    cfg = LiteConfig(max_segments=4, hidden=4, glob_hidden=0, ensemble=1, features=1)
    LiteModel.new(cfg, seed=0).save(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    del raw["config"]["features"]  # what an older thinkrm wrote
    (tmp_path / "config.json").write_text(json.dumps(raw))
    assert LiteModel.load(tmp_path).config.features == 1


def test_parse_cache_keeps_feature_versions_apart(tmp_path):
    from thinkrm.lite.features import parse as lite_parse

    items = [Item("Add 2 and 3.", "2 + 3 = 5.\n\nSo the answer is 5.")]
    v2 = Embedder(tmp_path).parsed_items(items, LiteConfig(max_segments=4, features=2), lite_parse)
    v1 = Embedder(tmp_path).parsed_items(items, LiteConfig(max_segments=4, features=1), lite_parse)
    assert v1[0][1].shape[1] < v2[0][1].shape[1] and len(v1[0][2]) < len(v2[0][2])
