import json
import shutil

import pytest

torch = pytest.importorskip("torch")

from thinkrm.formatting import InputConfig, format_input  # noqa: E402
from thinkrm.scoring import load_scorer  # noqa: E402

ITEMS = [
    ("What is 2 + 3?", "2 + 3 = 5."),
    ("How many seconds are in 7.8 minutes?", "60 * 7.8 = 468. So the answer is 468. Check: 468 / 60 = 7.8."),
    ("Factor x^2 - 5x + 6.", "Alternatively, x^2 - 5x + 6 = (x - 2)(x - 3)."),
    ("What is 7 * 8?", "Wait, 7 * 8 = 54. Actually 7 * 8 = 56, not 54."),
    ("Sum the digits 1 to 9.", "1 + 2 + 3 + 4 + 5 + 6 + 7 + 8 + 9 = 45"),
    ("What is 12 + 30?", "12 + 30 = 42</s>"),  # ends in EOS: must not be mistaken for padding
    ("Q", "So"),
]


# Every comparison with `reference` pins the scorer to the reference's device and dtype (CPU, float32), so a
# test means the same on a GPU machine, where the scorer would otherwise pick cuda and bfloat16.
CPU = dict(device="cpu", dtype="float32")


def reference(path, items, text=lambda p, r: format_input(p, r), trust_pad=False, device="cpu",
              dtype=torch.float32):
    """Plain transformers, one item at a time: no padding, score at the true last token.

    With `trust_pad`, the checkpoint's pad id is left in the config, so transformers' pooling skips
    trailing tokens equal to it, as a naive scorer would.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype).to(device).eval()
    if not trust_pad:
        model.config.pad_token_id = None
    out = []
    with torch.inference_mode():
        for p, r in items:
            enc = tok(text(p, r), return_tensors="pt").to(device)
            out.append(model(**enc).logits[0, 0].float().item())
    return out


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_scores_equal_plain_forward_and_keep_input_order(tiny_reward_model, batch_size):
    ref = reference(tiny_reward_model, ITEMS)
    assert len(set(round(x, 6) for x in ref)) == len(ITEMS)  # distinct, so a reordering would show
    with load_scorer(f"hf:{tiny_reward_model}", batch_size=batch_size, **CPU) as scorer:
        got = scorer.score(ITEMS)
        assert scorer.device == "cpu" and scorer.max_length == 512  # capped by the model's positions
    assert got == pytest.approx(ref, abs=1e-5)


@pytest.mark.slow
def test_tokenizer_padding_side_does_not_matter(tiny_reward_model, tmp_path):
    from transformers import AutoTokenizer

    scores = {}
    for side in ("left", "right"):
        d = tmp_path / side
        shutil.copytree(tiny_reward_model, d)
        tok = AutoTokenizer.from_pretrained(d)
        tok.padding_side = side
        tok.save_pretrained(d)
        scores[side] = load_scorer(f"hf:{d}", batch_size=4, **CPU).score(ITEMS)
    assert scores["left"] == pytest.approx(scores["right"], abs=1e-5)


@pytest.mark.slow
def test_checkpoint_without_pad_token_reads_true_last_token(tiny_reward_model_no_pad):
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tiny_reward_model_no_pad).pad_token is None
    ref = reference(tiny_reward_model_no_pad, ITEMS)
    got = load_scorer(f"hf:{tiny_reward_model_no_pad}", batch_size=4, **CPU).score(ITEMS)
    assert got == pytest.approx(ref, abs=1e-5)


@pytest.mark.slow
def test_pad_equal_to_eos_is_not_trusted(tiny_reward_model_no_pad, tmp_path):
    from transformers import AutoTokenizer

    d = tmp_path / "pad-is-eos"
    shutil.copytree(tiny_reward_model_no_pad, d)
    tok = AutoTokenizer.from_pretrained(d)
    tok.pad_token = tok.eos_token
    tok.save_pretrained(d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["pad_token_id"] = tok.eos_token_id
    (d / "config.json").write_text(json.dumps(cfg))
    got = load_scorer(f"hf:{d}", batch_size=8, **CPU).score(ITEMS)
    assert got == pytest.approx(reference(d, ITEMS), abs=1e-5)
    naive = reference(d, ITEMS, trust_pad=True)
    assert abs(naive[5] - got[5]) > 1e-3  # the row ending in EOS is where trusting pad == EOS goes wrong


def test_no_double_bos_in_chat_mode_from_sidecar(tiny_reward_model, tmp_path):
    from transformers import AutoTokenizer

    d = tmp_path / "chat"
    shutil.copytree(tiny_reward_model, d)
    tok = AutoTokenizer.from_pretrained(d)
    tok.chat_template = "<s>" + tok.chat_template  # like Llama-3 templates, which start with BOS text
    tok.save_pretrained(d)
    InputConfig(input_format="chat", max_length=4096).save(d)
    scorer = load_scorer(f"hf:{d}", batch_size=4, **CPU)
    assert scorer.input_format == "chat"
    ids = scorer.encoder.encode("Q", "R").input_ids
    assert ids.count(tok.bos_token_id) == 1
    ref = reference(d, ITEMS, text=lambda p, r: f"user: {p}\nassistant: {r}\n")
    assert scorer.score(ITEMS) == pytest.approx(ref, abs=1e-5)


def test_long_inputs_are_truncated_and_counted(tiny_reward_model):
    scorer = load_scorer(f"hf:{tiny_reward_model}", max_length=300, **CPU)
    long = ("Q", "12 + 30 = 42. " * 200)
    scores = scorer.score([long, ITEMS[0], long])
    assert scorer.truncated == 2 and scores[0] == pytest.approx(scores[2], abs=1e-6)


def test_bad_checkpoints_give_clear_errors(tiny_reward_model, tmp_path):
    with pytest.raises(ValueError, match="cannot load hf:"):
        load_scorer(f"hf:{tmp_path / 'missing'}")
    with pytest.raises(ValueError, match="needs a checkpoint"):
        load_scorer("hf:")
    d = tmp_path / "two-labels"
    shutil.copytree(tiny_reward_model, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["id2label"] = {"0": "a", "1": "b"}
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="2 labels"):
        load_scorer(f"hf:{d}")


def test_already_encoded_inputs_score_like_a_plain_forward_in_input_order(tiny_reward_model):
    # What `thinkrm train` calibrates with: the token ids of the training data, not re-encoded text.
    scorer = load_scorer(f"hf:{tiny_reward_model}", batch_size=3, **CPU)
    ids = [e.input_ids for e in scorer.encoder.encode_batch(ITEMS)]
    assert scorer.score_encoded(ids) == pytest.approx(reference(tiny_reward_model, ITEMS), abs=1e-5)


def test_scoring_in_two_stages_equals_scoring_at_once(tiny_reward_model):
    # What the server does: `prepare` (tokenize) requests as they arrive, then score merged batches of them.
    scorer = load_scorer(f"hf:{tiny_reward_model}", max_length=300, batch_size=3, **CPU)
    long = ("Q", "12 + 30 = 42. " * 200)
    items = [*ITEMS, long]
    whole = scorer.score(items)
    assert scorer.truncated == 1
    parts = [scorer.prepare(items[:2]), scorer.prepare(items[2:])]
    assert scorer.truncated == 1  # counted when scored, once per score
    assert scorer.score_prepared(parts[0] + parts[1]) == pytest.approx(whole, abs=1e-6)
    assert scorer.truncated == 2


def test_calibration_is_read_from_a_local_checkpoint(tiny_reward_model, tmp_path):
    from thinkrm.calibration import Calibration

    assert load_scorer(f"hf:{tiny_reward_model}").calibration is None  # a plain checkpoint records none
    d = tmp_path / "calibrated"
    shutil.copytree(tiny_reward_model, d)
    (d / "thinkrm.json").write_text(json.dumps({"input_format": "plain", "max_length": 256,
                                                "calibration": {"center": -1.5, "scale": 0.25, "n": 40,
                                                                "reference": "held-out"}}))
    scorer = load_scorer(f"hf:{d}")
    assert scorer.calibration == Calibration(-1.5, 0.25, 40, "held-out") and scorer.max_length == 256
    assert load_scorer(f"hf:{d}", calibration="2,3").calibration.center == 2.0  # a given one wins


def test_chunks_token_budget_and_prefetch_keep_input_order(tiny_reward_model):
    # Many chunks (so the background tokenizer thread runs), small batches cut by the token budget, mixed
    # lengths: still one plain forward's scores, in input order, and the same on every run.
    items = [(p, r * (1 + i % 5)) for i, (p, r) in enumerate(ITEMS * 6)]
    ref = reference(tiny_reward_model, items)
    scorer = load_scorer(f"hf:{tiny_reward_model}", batch_size=16, max_batch_tokens=200, chunk_size=5,
                         prefetch=True, **CPU)
    got = scorer.score(items)
    assert got == pytest.approx(ref, abs=1e-5)
    assert scorer.score(items) == got
    # Chunks split among tokenizer threads: the same token ids, so the same scores, in input order.
    threaded = load_scorer(f"hf:{tiny_reward_model}", batch_size=16, max_batch_tokens=200, chunk_size=9,
                           prefetch=True, tokenizer_threads=3, **CPU)
    assert threaded.prepare(items) == scorer.prepare(items)
    assert threaded.score(items) == pytest.approx(got, abs=1e-6)  # other chunks, other batches
    threaded.close()
    # A call of a few batches, within one chunk, is a pipeline too (its first batch, then the rest).
    few = load_scorer(f"hf:{tiny_reward_model}", batch_size=4, chunk_size=64, prefetch=True, **CPU)
    assert few.score(items[:30]) == pytest.approx(ref[:30], abs=1e-5)
    with pytest.raises(ValueError, match="tokenizer_threads"):
        load_scorer(f"hf:{tiny_reward_model}", tokenizer_threads=0)
    assert scorer.score([]) == [] and scorer.score_encoded([]) == []


def test_batches_respect_size_and_token_budget():
    from thinkrm.hf_scorer import plan_batches

    lengths = [5, 50, 7, 50, 3, 120, 9, 9]
    batches = plan_batches(lengths, batch_size=3, max_batch_tokens=100)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert batches[0] == [5]  # over the budget alone: a batch of its own
    for b in batches:
        assert len(b) <= 3 and (len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 100)
        assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)
    assert plan_batches(lengths, 3, 100) == batches  # deterministic, ties in input order


def test_decoder_head_runs_in_float32_on_the_scorer_device(tiny_reward_model):
    # The scorer's own device and dtype (cuda + bf16 on a GPU machine), against a reference on the same ones.
    scorer = load_scorer(f"hf:{tiny_reward_model}", batch_size=4)
    assert scorer._head is not None  # a Llama classifier: score head applied to the hidden state in fp32
    dtype = scorer.model.dtype
    ref = reference(tiny_reward_model, ITEMS, device=scorer.device, dtype=dtype)
    tol = 1e-5 if dtype == torch.float32 else 5e-2
    assert scorer.score(ITEMS) == pytest.approx(ref, abs=tol)
    assert all(isinstance(x, float) for x in scorer.score_ids([[1, 5, 7], [1, 9]]))


def test_weights_load_straight_onto_the_device_where_transformers_allows(tiny_reward_model, monkeypatch):
    import transformers.integrations.accelerate as hf_accelerate
    import transformers.utils as hf_utils

    from thinkrm.hf_scorer import _placement

    assert _placement("cpu") == {"device_map": "cpu"}
    want = load_scorer(f"hf:{tiny_reward_model}", **CPU).score(ITEMS[:2])
    # A bare CUDA image without accelerate: transformers refuses any device map, so none is passed.
    monkeypatch.setattr(hf_utils, "is_accelerate_available", lambda: False)
    monkeypatch.setattr(hf_accelerate, "is_accelerate_available", lambda: False)
    assert _placement("cpu") == {}
    assert load_scorer(f"hf:{tiny_reward_model}", **CPU).score(ITEMS[:2]) == want
