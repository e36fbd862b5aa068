import json

import pytest

from thinkrm.io import InputError
from thinkrm.pairs import Pair, load_pairs


def write(tmp_path, rows, name="pairs.jsonl"):
    p = tmp_path / name
    p.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return p


def test_string_pairs_with_margin_kind_and_extra(tmp_path):
    p = write(tmp_path, [{"id": "a", "prompt": "Q", "chosen": "good", "rejected": "bad", "margin": 2,
                          "kind": "circular", "source_model": "m"}])
    [pair] = load_pairs(p)
    assert pair == Pair(id="a", prompt="Q", chosen="good", rejected="bad", margin=2.0, kind="circular",
                        extra={"source_model": "m"}, source=f"{p}:1")


def test_reasoning_is_cut_at_end_of_thinking(tmp_path):
    p = write(tmp_path, [{"prompt": "Q", "chosen": "<think>think A</think> answer 5",
                          "rejected": "think B</think>answer 5"}])
    [pair] = load_pairs(p)
    assert (pair.chosen, pair.rejected, pair.id) == ("think A", "think B", "1")


def test_message_lists_explicit_and_implicit_prompt(tmp_path):
    def conv(text):
        return [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": text}]

    p = write(tmp_path, [
        {"prompt": [{"role": "system", "content": "sys"}, {"role": "user", "content": "Q?"}],
         "chosen": [{"role": "assistant", "content": "A1"}],
         "rejected": [{"role": "assistant", "content": "A2"}]},
        {"chosen": conv("B1"), "rejected": conv("B2")},
    ])
    a, b = load_pairs(p)
    assert (a.prompt, a.chosen, a.rejected) == ("Q?", "A1", "A2")
    assert (b.prompt, b.chosen, b.rejected) == ("Q?", "B1", "B2")


@pytest.mark.parametrize("row, field, words", [
    ({"prompt": "Q", "rejected": "x"}, "chosen", "missing"),
    ({"prompt": "Q", "chosen": "  \n", "rejected": "x"}, "chosen", "empty"),
    ({"prompt": "Q", "chosen": "x", "rejected": "x"}, "rejected", "identical"),
    ({"prompt": "Q", "chosen": 3, "rejected": "x"}, "chosen", "got int"),
    ({"prompt": 1, "chosen": "y", "rejected": "x"}, "prompt", "got int"),
    ({"prompt": "Q", "chosen": "y", "rejected": "x", "margin": "big"}, "margin", "number"),
    ({"prompt": "Q", "chosen": "y", "rejected": "x", "kind": 3}, "kind", "string"),
    ({"prompt": "Q", "chosen": [{"role": "user", "content": "y"}], "rejected": "x"}, "chosen", "assistant"),
    ({"prompt": "Q", "chosen": [{"role": "assistant"}], "rejected": "x"}, "chosen", "content"),
])
def test_bad_rows_name_file_line_field(tmp_path, row, field, words):
    p = write(tmp_path, [{"prompt": "ok", "chosen": "a", "rejected": "b"}, row])
    with pytest.raises(InputError) as e:
        list(load_pairs(p))
    assert (e.value.file, e.value.line, e.value.field) == (str(p), 2, field)
    assert words in str(e.value) and f"{p}:2" in str(e.value)


def test_missing_prompt_and_bad_json(tmp_path):
    p = write(tmp_path, [{"chosen": "a", "rejected": "b"}, "{not json"])
    bad = []
    assert list(load_pairs(p, skip_bad=True, on_bad=bad.append)) == []
    assert [e.line for e in bad] == [1, 2]
    assert "missing prompt" in str(bad[0]) and "invalid JSON" in str(bad[1])


def test_skip_bad_keeps_good_rows(tmp_path):
    p = write(tmp_path, [{"prompt": "Q", "chosen": "a", "rejected": "a"},
                         {"id": 7, "prompt": "Q", "chosen": "a", "rejected": "b"}])
    bad = []
    assert [x.id for x in load_pairs(p, skip_bad=True, on_bad=bad.append)] == ["7"]
    assert len(bad) == 1


@pytest.mark.shared_data
def test_shared_prmbench_pairs_load(shared_data):
    pairs = []
    for pair in load_pairs(shared_data / "prmbench-train" / "pairs.jsonl", skip_bad=True):
        pairs.append(pair)
        if len(pairs) == 200:
            break
    assert len(pairs) == 200 and all(p.kind for p in pairs)
