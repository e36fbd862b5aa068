"""Reading and writing records safely.

Every command in thinkrm reads JSONL (or a JSON list) and writes JSONL. Three rules live here so that no
command has to reimplement them:

* input errors name the file, the line and the field (`InputError`);
* output files are never left half-written: they are written to a temporary sibling and renamed into
  place only when complete (`atomic_write`);
* long jobs are resumable: `ResumableJsonl` appends one flushed line per finished record and, on restart,
  reports which ids are done, ignoring a torn last line from a killed run.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


class InputError(ValueError):
    """A problem with user input, located precisely enough to fix it."""

    def __init__(self, message: str, *, file: str | os.PathLike | None = None, line: int | None = None,
                 field: str | None = None):
        self.file = str(file) if file is not None else None
        self.line = line
        self.field = field
        self.reason = message
        where = ":".join(str(p) for p in (self.file, line) if p is not None)
        what = f"field '{field}': " if field else ""
        super().__init__(f"{where}: {what}{message}" if where else f"{what}{message}")


def iter_records(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any] | InputError]]:
    """Yield `(line_number, record_or_error)` from a JSONL file or a JSON list file.

    Errors are yielded, not raised, so callers decide between failing and `--skip-bad`. JSONL is streamed
    line by line (memory stays flat); a file whose first non-space byte is `[` is a JSON list and is
    parsed whole, its "line" being the 1-based item index.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", file=path)
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
        f.seek(0)
        if head.startswith(b"["):
            try:
                items = json.loads(f.read().decode("utf-8"))
            except UnicodeDecodeError as e:
                raise InputError(f"not valid UTF-8 ({e.reason} at byte {e.start})", file=path) from None
            except json.JSONDecodeError as e:
                raise InputError(f"invalid JSON list: {e.msg}", file=path, line=e.lineno) from None
            for i, item in enumerate(items, 1):
                if isinstance(item, dict):
                    yield i, item
                else:
                    yield i, InputError(f"expected a JSON object, got {type(item).__name__}", file=path, line=i)
            return
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield lineno, InputError(f"not valid UTF-8 ({e.reason} at byte {e.start})", file=path, line=lineno)
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                yield lineno, InputError(f"invalid JSON: {e.msg} (column {e.colno})", file=path, line=lineno)
                continue
            if not isinstance(obj, dict):
                yield lineno, InputError(f"expected a JSON object, got {type(obj).__name__}", file=path, line=lineno)
                continue
            yield lineno, obj


def read_jsonl(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Records of a JSONL/JSON-list file; raises `InputError` on the first bad one."""
    for _, rec in iter_records(path):
        if isinstance(rec, InputError):
            raise rec
        yield rec


def dumps(record: Any) -> str:
    """One JSONL line. Non-ASCII kept readable; NaN rejected because other JSON readers refuse it."""
    return json.dumps(record, ensure_ascii=False, allow_nan=False, default=_default)


def _default(obj: Any) -> Any:
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__}")


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    # mkstemp creates 0600 files; give the result the permissions a plain open() would (outputs such as model
    # configs are often read by another user, e.g. a serving container).
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _umask() -> int:
    """The process umask. Linux reports it in /proc; elsewhere it can only be read by setting it, which
    briefly affects files other threads create, so that is the fallback."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_jsonl(path: str | os.PathLike, records: Iterable[Any]) -> int:
    """Atomically write records as JSONL; returns how many were written."""
    n = 0
    with atomic_write(path) as f:
        for rec in records:
            f.write(dumps(rec) + "\n")
            n += 1
    return n


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_write(path) as f:
        json.dump(obj, f, ensure_ascii=False, indent=2, default=_default)
        f.write("\n")


class ResumableJsonl:
    """An append-only JSONL store keyed by a record field, safe against `kill -9`.

    Each record is written as one line and flushed + fsynced before `add` returns, so a finished record is
    never lost. A torn final line (the process died mid-write) is truncated away on open. `done` holds the
    keys already present, so a rerun skips them and never duplicates a record.
    """

    def __init__(self, path: str | os.PathLike, key: str = "id", *, resume: bool = True):
        self.path = Path(path)
        self.key = key
        self.done: set[str] = set()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume and self.path.exists():
            self._recover()
        elif self.path.exists():
            self.path.unlink()
        self._f = open(self.path, "a", encoding="utf-8")

    def _recover(self) -> None:
        good = 0
        with open(self.path, "rb") as f:
            for raw in f:
                if not raw.endswith(b"\n"):
                    break
                try:
                    rec = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    break
                if isinstance(rec, dict) and self.key in rec:
                    self.done.add(str(rec[self.key]))
                good += len(raw)
        if good < self.path.stat().st_size:
            with open(self.path, "r+b") as f:
                f.truncate(good)

    def __contains__(self, key: object) -> bool:
        return str(key) in self.done

    def add(self, record: dict[str, Any]) -> None:
        self.add_many([record])

    def add_many(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records not yet done, then flush and fsync once: a batch costs one disk sync, not one each."""
        wrote = False
        for record in records:
            k = str(record[self.key])
            if k in self.done:
                continue
            self._f.write(dumps(record) + "\n")
            self.done.add(k)
            wrote = True
        if wrote:
            self._f.flush()
            os.fsync(self._f.fileno())

    def records(self) -> Iterator[dict[str, Any]]:
        self._f.flush()
        yield from read_jsonl(self.path)

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> ResumableJsonl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
