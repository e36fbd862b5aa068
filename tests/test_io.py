"""The IO layer: located errors, atomic outputs, kill-safe resumable stores."""

import json
import os
import stat

import pytest

from thinkrm.io import InputError, ResumableJsonl, atomic_write, iter_records, read_jsonl, write_jsonl


def test_iter_records_reports_each_bad_line(tmp_path):
    p = tmp_path / "in.jsonl"
    p.write_bytes(b'{"a": 1}\n\n{oops\n[1, 2]\n\xff\xfe\n{"b": 2}\n')
    got = list(iter_records(p))
    assert [line for line, _ in got] == [1, 3, 4, 5, 6]
    assert got[0][1] == {"a": 1} and got[-1][1] == {"b": 2}
    errors = [r for _, r in got if isinstance(r, InputError)]
    assert [e.line for e in errors] == [3, 4, 5]
    assert "invalid JSON" in str(errors[0]) and f"{p}:3" in str(errors[0])
    assert "expected a JSON object, got list" in str(errors[1])
    assert "UTF-8" in str(errors[2])


def test_json_list_file_is_read_with_item_numbers(tmp_path):
    p = tmp_path / "in.json"
    p.write_text(json.dumps([{"a": 1}, "nope"]))
    got = list(iter_records(p))
    assert got[0] == (1, {"a": 1})
    assert isinstance(got[1][1], InputError) and got[1][1].line == 2


def test_read_jsonl_raises_on_first_bad_row(tmp_path):
    p = tmp_path / "in.jsonl"
    p.write_text('{"a": 1}\nnot json\n')
    with pytest.raises(InputError, match=r":2: invalid JSON"):
        list(read_jsonl(p))
    with pytest.raises(InputError, match="file not found"):
        list(read_jsonl(tmp_path / "missing.jsonl"))


def test_atomic_write_leaves_nothing_on_failure_and_keeps_old_file(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_write(out) as f:
            f.write("half")
            raise RuntimeError("crash")
    assert out.read_text() == "old\n"
    assert sorted(os.listdir(tmp_path)) == ["out.jsonl"]


def test_atomic_write_gives_normal_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        write_jsonl(tmp_path / "o.jsonl", [{"x": 1}])
    finally:
        os.umask(mask)
    assert stat.S_IMODE(os.stat(tmp_path / "o.jsonl").st_mode) == 0o644


def test_resumable_store_survives_torn_line_and_skips_done(tmp_path):
    p = tmp_path / "store.jsonl"
    with ResumableJsonl(p) as store:
        store.add({"id": "a", "v": 1})
        store.add({"id": "b", "v": 2})
    with open(p, "a") as f:
        f.write('{"id": "c", "v"')  # a process killed mid-write
    with ResumableJsonl(p) as store:
        assert store.done == {"a", "b"} and "c" not in store
        store.add({"id": "b", "v": 99})  # already done: not duplicated
        store.add({"id": "c", "v": 3})
        rows = list(store.records())
    assert [r["id"] for r in rows] == ["a", "b", "c"]
    assert rows[1]["v"] == 2


def test_resumable_store_without_resume_starts_over(tmp_path):
    p = tmp_path / "store.jsonl"
    with ResumableJsonl(p) as store:
        store.add({"id": "a"})
    with ResumableJsonl(p, resume=False) as store:
        assert not store.done
        assert list(store.records()) == []


def deep(n: int) -> str:
    return "[" * n + "]" * n


def test_text_no_stage_can_take_is_an_error_of_its_row(tmp_path):
    from thinkrm.io import MAX_DEPTH

    p = tmp_path / "in.jsonl"
    rows = [
        '{"id": "ok", "reasoning": "fine \\ud83d\\ude00"}',  # an escaped surrogate *pair* is an emoji: fine
        '{"id": "s", "reasoning": "bad \\ud800 text"}',
        '{"id": "k", "meta": {"\\udfff": 1}}',
        '{"id": "n", "meta": {"tags": ["a", "nul\\u0000"]}}',
        '{"id": "d", "meta": ' + deep(MAX_DEPTH) + "}",  # parses; one level too deep
        '{"id": "dd", "meta": ' + deep(100_000) + "}",  # beyond the recursion limit of the JSON decoder
        '{"id": "limit", "meta": ' + deep(MAX_DEPTH - 1) + "}",
    ]
    p.write_text("\n".join(rows) + "\n")
    got = dict(iter_records(p))
    assert got[1] == {"id": "ok", "reasoning": "fine \U0001F600"} and got[7]["id"] == "limit"
    errors = {line: r for line, r in got.items() if isinstance(r, InputError)}
    assert sorted(errors) == [2, 3, 4, 5, 6]
    assert errors[2].field == "reasoning"
    assert errors[2].reason == "contains a lone surrogate (\\ud800) at character 4"
    assert errors[3].field == "meta" and "a key contains a lone surrogate (\\udfff)" in str(errors[3])
    assert errors[4].field == "meta.tags[1]" and "NUL character" in str(errors[4])
    assert errors[5].field.startswith("meta[0][0]")
    assert f"nested deeper than {MAX_DEPTH} levels" in str(errors[5])
    assert f"{p}:6: nested deeper than {MAX_DEPTH} levels" == str(errors[6])
    # Every message can be printed and written as UTF-8 (the surrogate itself is never echoed).
    for e in errors.values():
        str(e).encode("utf-8")


def test_json_list_bad_items_and_whole_file_problems(tmp_path):
    p = tmp_path / "in.json"
    p.write_text('[{"a": "x"},\n {"a": "\\ud800"}]')
    got = list(iter_records(p))
    assert got[0] == (1, {"a": "x"}) and isinstance(got[1][1], InputError) and got[1][1].field == "a"
    p.write_text("[" + deep(100_000) + "]")
    with pytest.raises(InputError, match="invalid JSON list: nested deeper than"):
        list(iter_records(p))
    p.write_bytes(b'[{"a": "x"},\n\n {"a": "caf\xe9"}]')
    with pytest.raises(InputError, match=r"in.json:3: not valid UTF-8"):
        list(iter_records(p))
    with pytest.raises(InputError, match="is a directory; expected a file"):
        list(iter_records(tmp_path))


@pytest.mark.parametrize("content", ["", "\n  \n", "[]", " [ ] "])
def test_empty_input_is_an_error_only_when_asked(tmp_path, content):
    p = tmp_path / "in.jsonl"
    p.write_text(content)
    assert list(iter_records(p)) == []
    with pytest.raises(InputError, match=r"in.jsonl: no rows: the file is empty"):
        list(iter_records(p, allow_empty=False))


def test_outputs_replace_only_regular_files(tmp_path):
    from thinkrm.io import check_output_file

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match=r"fifo: is a FIFO, not a regular file"), atomic_write(fifo) as f:
        f.write("x")
    with pytest.raises(InputError, match=r"fifo: is a FIFO"):
        ResumableJsonl(fifo, resume=False)
    with pytest.raises(InputError, match=r"fifo: is a FIFO"):
        ResumableJsonl(fifo, resume=True)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # still there, still a FIFO
    with pytest.raises(InputError, match="is a directory; expected a file"):
        ResumableJsonl(tmp_path, resume=False)
    with pytest.raises(InputError, match="is a directory; expected a file"):
        write_jsonl(tmp_path, [])
    assert tmp_path.is_dir()
    (tmp_path / "file").write_text("keep")
    for below_a_file in (tmp_path / "file" / "o.jsonl", tmp_path / "file" / "sub" / "o.jsonl"):
        with pytest.raises(InputError, match="o.jsonl: a parent of the output path is a file, not a dir"):
            write_jsonl(below_a_file, [])
        with pytest.raises(InputError, match="a parent of the output path is a file"):
            check_output_file(below_a_file)
    assert (tmp_path / "file").read_text() == "keep"


def test_a_symlinked_output_is_written_through_and_kept(tmp_path):
    target = tmp_path / "real.jsonl"
    target.write_text("old\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    write_jsonl(link, [{"x": 1}])
    assert link.is_symlink() and json.loads(target.read_text()) == {"x": 1}
    with ResumableJsonl(link, resume=False) as store:
        store.add({"id": "a"})
    assert link.is_symlink() and target.read_text() == '{"id": "a"}\n'


def test_an_input_under_any_name_is_not_an_output(tmp_path):
    from thinkrm.io import check_output_file

    src = tmp_path / "in.jsonl"
    src.write_text("{}\n")
    (tmp_path / "hard.jsonl").hardlink_to(src)
    (tmp_path / "sym.jsonl").symlink_to(src)
    for name in ("in.jsonl", "hard.jsonl", "sym.jsonl", "./sub/../in.jsonl"):
        with pytest.raises(InputError, match="is the input file"):
            check_output_file(tmp_path / name, inputs=[src])
    assert check_output_file(tmp_path / "other.jsonl", inputs=[src]) == (tmp_path / "other.jsonl").resolve()


def test_temporaries_of_a_killed_write_are_removed_by_the_next_one(tmp_path):
    import fcntl
    import subprocess
    import sys
    import time

    out = tmp_path / "out.jsonl"
    # A real writer killed with -9 in the middle of an atomic write.
    code = ("import sys, time\nfrom thinkrm.io import atomic_write\n"
            "with atomic_write(sys.argv[1]) as f:\n"
            "    f.write('x' * 100000); f.flush(); print('ready', flush=True)\n"
            "    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
    finally:
        proc.kill()
        proc.wait()
    left = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert len(left) == 1 and left[0].startswith(".out.jsonl.") and not out.exists()
    # A concurrent writer's temporary (locked) and files that only look similar are not touched.
    busy = tmp_path / ".out.jsonl.busy0000.tmp"
    busy.write_text("in use")
    keep = [tmp_path / ".out.jsonl.notours.tmp", tmp_path / ".other.jsonl.abcd1234.tmp"]
    for k in keep:
        k.write_text("x")
    with open(busy, "r+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        start = time.monotonic()
        write_jsonl(out, [{"a": 1}])
        assert time.monotonic() - start < 5  # never waits on the busy one
    remaining = sorted(n for n in os.listdir(tmp_path) if n.endswith(".tmp"))
    assert remaining == sorted([busy.name] + [k.name for k in keep])
    assert json.loads(out.read_text()) == {"a": 1}


def test_resume_refuses_a_corrupt_complete_line_instead_of_cutting_the_rest(tmp_path):
    p = tmp_path / "store.jsonl"
    content = '{"id": "a"}\nnot json\n{"id": "b"}\n'
    p.write_text(content)
    with pytest.raises(InputError, match=r"store.jsonl:2: not a line this store wrote"):
        ResumableJsonl(p)
    assert p.read_text() == content


def test_one_table_of_field_names_and_the_first_present_wins():
    from thinkrm.io import GOLD_FIELDS, PROMPT_FIELDS, REASONING_FIELDS, RESPONSE_FIELDS, first_field

    assert PROMPT_FIELDS == ("prompt", "question", "problem")
    assert RESPONSE_FIELDS == ("response", "completion")
    assert REASONING_FIELDS == ("reasoning", *RESPONSE_FIELDS)
    assert GOLD_FIELDS == ("gold", "ground_truth", "answer", "solution")
    rec = {"question": "q", "prompt": "p", "answer": "#### 4", "ground_truth": "4", "solution": "..."}
    assert first_field(rec, PROMPT_FIELDS) == "prompt"  # order of the table, not of the record
    assert first_field(rec, GOLD_FIELDS) == "ground_truth"
    assert first_field({"prompt": None, "problem": "x"}, PROMPT_FIELDS) == "problem"  # null counts as absent
    assert first_field({"answer": 0}, GOLD_FIELDS) == "answer"  # falsy values are values
    assert first_field({"x": 1}, PROMPT_FIELDS) is None
    chat = [{"role": "user", "content": "q"}]
    assert first_field({"prompt": chat, "question": "q"}, PROMPT_FIELDS) == "prompt"  # caller checks the type
    assert first_field({"prompt": chat, "question": "q"}, PROMPT_FIELDS, str) == "question"  # or skips others
