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
