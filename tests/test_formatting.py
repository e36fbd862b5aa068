import json

import pytest

from thinkrm.formatting import (
    DEFAULT_MAX_LENGTH,
    PROMPT_TRUNCATION_MARKER,
    SIDECAR,
    TRUNCATION_MARKER,
    InputConfig,
    InputEncoder,
    format_input,
)
from thinkrm.io import InputError


@pytest.fixture(scope="module")
def tok():
    from tiny_models import make_tokenizer

    return make_tokenizer()


def test_plain_format_is_prompt_newline_reasoning():
    assert format_input("What is 2+3?", "2 + 3 = 5") == "What is 2+3?\n2 + 3 = 5"


def test_chat_format_needs_a_template_and_uses_it(tok):
    assert format_input("Q", "R", input_format="chat", tokenizer=tok) == "user: Q\nassistant: R\n"
    with pytest.raises(ValueError, match="chat template"):
        format_input("Q", "R", input_format="chat")
    with pytest.raises(ValueError, match="unknown input_format"):
        format_input("Q", "R", input_format="xml")


def test_short_input_is_exactly_the_tokenized_text_with_one_bos(tok):
    enc = InputEncoder(tok)
    out = enc.encode("What is 2 + 3?", "2 + 3 = 5. So the answer is 5.")
    assert out.truncated is False
    assert out.input_ids == tok("What is 2 + 3?\n2 + 3 = 5. So the answer is 5.")["input_ids"]
    assert out.input_ids.count(tok.bos_token_id) == 1 and out.input_ids[0] == tok.bos_token_id


def test_chat_template_carrying_bos_is_not_doubled(tok):
    from tiny_models import make_tokenizer

    t = make_tokenizer()
    t.chat_template = "<s>" + t.chat_template
    ids = InputEncoder(t, input_format="chat").encode("Q", "R").input_ids
    assert ids.count(t.bos_token_id) == 1
    assert ids == t("user: Q\nassistant: R\n")["input_ids"]


def test_long_reasoning_keeps_prompt_and_end_and_marks_the_cut(tok):
    prompt = "How many seconds are in 7.8 minutes?"
    reasoning = " ".join(f"step {i}: 60 * 7.8 = 468." for i in range(300)) + " So the answer is 468."
    enc = InputEncoder(tok, max_length=256)
    out = enc.encode(prompt, reasoning)
    assert out.truncated and len(out.input_ids) <= 256
    assert len(out.input_ids) >= 256 - 8  # the budget is used, not wasted
    text = tok.decode(out.input_ids, skip_special_tokens=True)
    assert text.startswith(prompt + "\n" + TRUNCATION_MARKER)
    assert text.endswith("step 299: 60 * 7.8 = 468. So the answer is 468.")
    assert reasoning.endswith(text.split(TRUNCATION_MARKER, 1)[1])  # kept part is a true suffix


def test_huge_prompt_is_cut_too_but_reasoning_keeps_a_quarter(tok):
    prompt = "Question: " + "the sum of the digits is 45. " * 200
    reasoning = "First, note 12 + 30 = 42. " * 100 + "Therefore the final answer is 42."
    out = InputEncoder(tok, max_length=400).encode(prompt, reasoning)
    assert out.truncated and len(out.input_ids) <= 400
    text = tok.decode(out.input_ids, skip_special_tokens=True)
    assert text.startswith("Question: the sum of the digits is 45.")
    assert PROMPT_TRUNCATION_MARKER + "\n" + TRUNCATION_MARKER in text
    assert text.endswith("Therefore the final answer is 42.")
    kept_reasoning = tok(text.split(TRUNCATION_MARKER, 1)[1], add_special_tokens=False)["input_ids"]
    assert len(kept_reasoning) >= 400 // 4 - 8


def test_too_small_max_length_is_refused(tok):
    with pytest.raises(ValueError, match="too small"):
        InputEncoder(tok, max_length=20)


def test_sidecar_round_trip_and_errors(tmp_path):
    assert InputConfig.load(tmp_path) is None
    InputConfig(input_format="chat", max_length=2048).save(tmp_path)
    assert json.loads((tmp_path / SIDECAR).read_text()) == {"input_format": "chat", "max_length": 2048}
    assert InputConfig.load(tmp_path) == InputConfig("chat", 2048)
    (tmp_path / SIDECAR).write_text('{"input_format": "html"}')
    with pytest.raises(InputError, match="thinkrm.json.*input_format"):
        InputConfig.load(tmp_path)
    (tmp_path / SIDECAR).write_text("{oops")
    with pytest.raises(InputError, match="invalid JSON"):
        InputConfig.load(tmp_path)
    assert InputConfig().max_length == DEFAULT_MAX_LENGTH == 8192


def test_encode_batch_matches_one_by_one_for_short_and_long(tok):
    enc = InputEncoder(tok, max_length=256)
    items = [("Q", "2 + 3 = 5"), ("Q2", "12 + 30 = 42. " * 100), ("Q3", "")]
    batch = enc.encode_batch(items)
    assert batch == [enc.encode(p, r) for p, r in items]
    assert [e.truncated for e in batch] == [False, True, False]
    assert enc.encode_batch([]) == []


# A word the tokenizer below reads as one token: text far sparser than 4 characters per token.
LONG_WORD = " supercalifragilistic"


@pytest.fixture(scope="module")
def long_word_tok():
    from tiny_models import make_tokenizer

    return make_tokenizer(extra_corpus=(LONG_WORD * 50,) * 20)


def _mixed_items():
    return [("Q", "2 + 3 = 5"),
            ("How many seconds are in 7.8 minutes?", " ".join(f"step {i}: 60 * 7.8 = 468." for i in range(300))),
            ("Question: " + "the sum of the digits is 45. " * 200, "First, note 12 + 30 = 42. " * 100),
            ("Q4", "é字" * 900 + " So the answer is 7."),  # several tokens per character
            ("Q5", LONG_WORD * 400 + " So the answer is 7."),  # 21 characters per token: the tail must grow
            ("Q6", LONG_WORD * 100),  # longer than 6 characters per token of the budget, and yet it fits
            ("Q7", "")]


@pytest.mark.parametrize("which", ["tok", "long_word_tok"])
def test_cutting_reads_only_a_tail_and_cuts_where_reading_everything_would(which, request, monkeypatch):
    import thinkrm.formatting as formatting

    tokenizer = request.getfixturevalue(which)
    enc = InputEncoder(tokenizer, max_length=256)
    seen: list[str] = []  # every text the tokenizer is given
    pieces, tokenize = enc._pieces, enc._tokenize
    monkeypatch.setattr(enc, "_pieces", lambda texts: seen.extend(texts) or pieces(texts))
    monkeypatch.setattr(enc, "_tokenize", lambda texts: seen.extend(texts) or tokenize(texts))
    items = _mixed_items()
    fast = enc.encode_batch(items)
    assert [e.truncated for e in fast] == [False, True, True, True, True, which == "tok", False]
    assert all(len(e.input_ids) <= 256 for e in fast)
    assert not any(r in text for _, r in items[1:5] for text in seen)  # no reasoning that was cut was read whole
    # The reference reads every reasoning whole, as cutting did before it read tails.
    monkeypatch.setattr(formatting, "_TAIL_SLACK", 10**9)
    assert enc.encode_batch(items) == fast


@pytest.mark.parametrize("which", ["tok", "long_word_tok"])
def test_skipping_the_whole_text_call_changes_nothing(which, request, monkeypatch):
    import thinkrm.formatting as formatting

    enc = InputEncoder(request.getfixturevalue(which), max_length=256)
    expected = enc.encode_batch(_mixed_items())
    monkeypatch.setattr(formatting, "_LONG_TEXT_CHARS", 0)  # every text skips the whole-text call
    assert enc.encode_batch(_mixed_items()) == expected


def test_sparse_text_near_the_budget_fits_or_is_cut_as_if_tokenized_whole(long_word_tok, monkeypatch):
    import thinkrm.formatting as formatting

    enc = InputEncoder(long_word_tok, max_length=256)
    items = [("Q", LONG_WORD * n) for n in range(236, 276)]  # 20 characters per token: none read whole
    # A sparse head and a dense end: the tail holds as many tokens as a cut needs, yet the whole fits, and
    # only the marker's tokens in the tail's length tell the two apart.
    items.append(("Q", LONG_WORD * 44 + " 42" * 208))
    fast = enc.encode_batch(items)
    assert {e.truncated for e in fast} == {False, True}
    monkeypatch.setattr(formatting, "_LONG_TEXT_CHARS", 10**9)  # every text is first tokenized whole
    assert enc.encode_batch(items) == fast


def test_a_tokenizer_without_offsets_still_cuts_to_fit(tok):
    class NoOffsets:
        """A slow tokenizer's view: no character offsets."""

        is_fast = False

        def __getattr__(self, name):
            return getattr(tok, name)

        def __call__(self, text, return_offsets_mapping=False, **kw):
            assert not return_offsets_mapping
            return tok(text, **kw)

    enc = InputEncoder(NoOffsets(), max_length=256)
    items = _mixed_items()
    for (_, reasoning), out in zip(items, enc.encode_batch(items)):
        assert len(out.input_ids) <= 256
        text = tok.decode(out.input_ids, skip_special_tokens=True)
        assert text.endswith(reasoning[-20:])
        assert out.truncated == (TRUNCATION_MARKER in text)
