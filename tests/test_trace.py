"""Trace input: field names, end-of-thinking markers, carried fields, located errors."""

import json

import pytest

from thinkrm import InputError, load_traces, split_response


def write(tmp_path, rows, name="t.jsonl"):
    p = tmp_path / name
    p.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return p


@pytest.mark.parametrize("response, reasoning, answer", [
    ("<think>\nlet me see\n</think>\nThe answer is 4.", "let me see", "The answer is 4."),
    ("no tags at all", "no tags at all", ""),
    ("<|begin_of_thought|>\n\nthink\n\n<|end_of_thought|>\n\n<|begin_of_solution|>4<|end_of_solution|>",
     "think", "<|begin_of_solution|>4<|end_of_solution|>"),
    ("a </think> b </think> final", "a </think> b ", "final"),
    ("<|begin_of_thought|> cut off mid-thought", " cut off mid-thought", ""),
])
def test_split_response(response, reasoning, answer):
    assert split_response(response) == (reasoning, answer)


def test_load_traces_fields_and_passthrough(tmp_path):
    p = write(tmp_path, [
        {"id": "x", "question": "Q1", "response": "r1</think>A1", "model": "m", "score_ref": 1.5},
        {"problem": "Q2", "reasoning": "r2"},
        {"prompt": "Q3", "reasoning": "r3", "response": "full</think>A3"},
    ])
    t1, t2, t3 = load_traces(p)
    assert (t1.id, t1.prompt, t1.reasoning, t1.answer) == ("x", "Q1", "r1", "A1")
    assert t1.extra == {"model": "m", "score_ref": 1.5}
    assert t1.to_dict()["model"] == "m" and t1.to_dict()["response"] == "r1</think>A1"
    assert t2.id == "2" and t2.prompt == "Q2" and t2.response is None
    assert t3.reasoning == "r3" and t3.answer == "A3"
    assert t1.source == f"{p}:1"


@pytest.mark.parametrize("row, message", [
    ({"reasoning": "r"}, "missing prompt"),
    ({"prompt": "q"}, "missing trace"),
    ({"prompt": "q", "reasoning": ["not", "a", "string"]}, "field 'reasoning': expected a string, got list"),
    ({"prompt": 3, "reasoning": "r"}, "field 'prompt': expected a string, got int"),
    ({"prompt": "q", "reasoning": "r", "id": {"a": 1}}, "field 'id'"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, row, message):
    p = write(tmp_path, [{"prompt": "ok", "reasoning": "fine"}, row])
    with pytest.raises(InputError) as e:
        list(load_traces(p))
    assert message in str(e.value)
    assert e.value.line == 2 and str(p) in str(e.value)


def test_skip_bad_reports_and_continues(tmp_path):
    p = write(tmp_path, [{"prompt": "a", "reasoning": "r"}, "{broken", {"prompt": "b"},
                         {"prompt": "c", "reasoning": "r"}])
    bad = []
    got = list(load_traces(p, skip_bad=True, on_bad=bad.append))
    assert [t.prompt for t in got] == ["a", "c"]
    assert [e.line for e in bad] == [2, 3]


def test_json_list_input(tmp_path):
    p = tmp_path / "t.json"
    p.write_text(json.dumps([{"prompt": "a", "reasoning": "r"}]))
    (t,) = load_traces(p)
    assert t.id == "1" and t.prompt == "a"


def test_read_traces_options_unique_ids_empty_reasoning_and_empty_file(tmp_path):
    from thinkrm.trace import read_traces

    p = tmp_path / "t.jsonl"
    rows = [{"id": "a", "prompt": "Q", "reasoning": "r", "extra": 1},
            {"id": "a", "prompt": "Q", "reasoning": "s"},
            {"id": "b", "prompt": "Q", "response": "</think> 5"}]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [t.id for t in load_traces(p)] == ["a", "a", "b"]  # the defaults change nothing
    bad = []
    got = list(read_traces(p, skip_bad=True, on_bad=bad.append, unique_ids=True, require_reasoning=True))
    assert [(t.id, rec) for t, rec in got] == [("a", rows[0])]
    assert [str(e) for e in bad] == [f"{p}:2: field 'id': duplicate id 'a' (first on line 1)",
                                     (f"{p}:3: field 'response': empty reasoning (nothing before the "
                                      "end-of-thinking marker)")]
    p.write_text("\n")
    assert list(load_traces(p)) == []
    with pytest.raises(InputError, match="no rows: the file is empty"):
        list(load_traces(p, allow_empty=False))
