"""Reading and writing records safely.

Every command in thinkrm reads JSONL (or a JSON list) and writes JSONL. Three rules live here so that no
command has to reimplement them:

* input errors name the file, the line and the field (`InputError`); a row that no later stage could
  handle is an error of that row, not a crash: text that is not valid UTF-8, strings holding a lone
  surrogate (unwritable as UTF-8) or a NUL character, nesting deeper than `MAX_DEPTH`;
* output files are never left half-written: they are written to a temporary sibling and renamed into
  place only when complete (`atomic_write`); temporaries of a killed run are removed by the next write;
* outputs replace only regular files: a directory, FIFO, device or socket at an output path is refused,
  never deleted, and a symlink is written through, not replaced (`check_output_file`);
* long jobs are resumable: `ResumableJsonl` appends one flushed line per finished record and, on restart,
  reports which ids are done, ignoring a torn last line from a killed run;
* one table of field names: wherever a record may name its problem, its model output or its reference
  answer in more than one way, the first name present wins, in the order of `PROMPT_FIELDS`,
  `REASONING_FIELDS` / `RESPONSE_FIELDS` and `GOLD_FIELDS` (`first_field`; a null value counts as absent).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
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


# ---- field names ------------------------------------------------------------------------------------------
# One table for every reader (traces, pairs, Best-of-N candidates, problems, TRL columns, verl's extra_info):
# the first name a record has wins.
# The problem. thinkrm's own name first; "question" (GSM8K, verl's extra_info), "problem" (MATH).
PROMPT_FIELDS = ("prompt", "question", "problem")
# A full model output, split at the end-of-thinking marker into reasoning and final answer (`completion`:
# TRL's prompt-completion format).
RESPONSE_FIELDS = ("response", "completion")
# Where a trace's reasoning is read from: `reasoning` is the thinking text as is and wins; otherwise the
# reasoning is the part of a response field before its end-of-thinking marker.
REASONING_FIELDS = ("reasoning", *RESPONSE_FIELDS)
# The reference answer. thinkrm's explicit `gold` first, then `ground_truth` (verl's cleaned reference, which
# datasets carry next to the raw `answer`), then `answer` (GSM8K, MATH-500), then `solution` (MATH).
GOLD_FIELDS = ("gold", "ground_truth", "answer", "solution")


def first_field(record: Mapping[str, Any], names: Sequence[str], types: type | tuple[type, ...] | None = None
                ) -> str | None:
    """The first of `names` that `record` holds a value for (null counts as absent), or None.

    With `types`, a value of another type is skipped too (for optional inputs, such as verl's `extra_info`,
    where a field of another shape means "not given"); without, the caller reports a wrong type, naming the
    field it found.
    """
    for name in names:
        value = record.get(name)
        if value is not None and (types is None or isinstance(value, types)):
            return name
    return None


# Deepest nesting of objects and lists a record may have (the record itself is level 1). Real rows (chat
# message lists, metadata) stay under 10; the limit keeps every later recursive step (json.dumps, pydantic,
# tokenizers) far from Python's recursion limit, so a hostile row is an input error, not a RecursionError.
MAX_DEPTH = 100
# Valid UTF-8 cannot encode a surrogate, and JSON forbids a raw NUL in a string, so a decoded string can hold
# either only through one of these escapes: rows without them are not searched. Both tests run on the raw
# bytes, where searching is several times faster than in decoded text, so reading stays nearly as fast.
_RISKY_ESCAPES = (b"\\ud", b"\\uD", b"\\u0000")


def _may_hold_bad_text(raw: bytes) -> bool:
    return b"\\u" in raw and any(e in raw for e in _RISKY_ESCAPES)


def _may_be_too_deep(raw: bytes) -> bool:
    return raw.count(b"[") + raw.count(b"{") > MAX_DEPTH


def iter_records(path: str | os.PathLike, *, allow_empty: bool = True
                 ) -> Iterator[tuple[int, dict[str, Any] | InputError]]:
    """Yield `(line_number, record_or_error)` from a JSONL file or a JSON list file.

    Errors of a row are yielded, not raised, so callers decide between failing and `--skip-bad`. JSONL is
    streamed line by line (memory stays flat); a file whose first non-space byte is `[` is a JSON list and
    is parsed whole, its "line" being the 1-based item index. Problems of the whole file (missing, not
    parseable as a list, or empty when `allow_empty` is false) are raised.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", file=path)
    if path.is_dir():
        raise InputError("is a directory; expected a file", file=path)
    seen = False
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
        f.seek(0)
        if head.startswith(b"["):
            data = f.read()
            try:
                items = json.loads(data.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise InputError(f"not valid UTF-8 ({e.reason} at byte {e.start})", file=path,
                                 line=data.count(b"\n", 0, e.start) + 1) from None
            except json.JSONDecodeError as e:
                raise InputError(f"invalid JSON list: {e.msg}", file=path, line=e.lineno) from None
            except RecursionError:
                raise InputError(f"invalid JSON list: nested deeper than {MAX_DEPTH} levels",
                                 file=path) from None
            texts = _may_hold_bad_text(data)
            for i, item in enumerate(items, 1):
                seen = True
                yield i, _checked(item, path, i, texts=texts, depth=True)
        else:
            for lineno, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                seen = True
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    yield lineno, InputError(f"not valid UTF-8 ({e.reason} at byte {e.start})", file=path,
                                             line=lineno)
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as e:
                    yield lineno, InputError(f"invalid JSON: {e.msg} (column {e.colno})", file=path,
                                             line=lineno)
                    continue
                except RecursionError:  # the C decoder stops near the recursion limit; nothing is corrupted
                    yield lineno, InputError(f"nested deeper than {MAX_DEPTH} levels", file=path, line=lineno)
                    continue
                yield lineno, _checked(obj, path, lineno, texts=_may_hold_bad_text(raw),
                                       depth=_may_be_too_deep(raw))
    if not seen and not allow_empty:
        raise InputError("no rows: the file is empty", file=path)


def _checked(obj: Any, path: Path, line: int, *, texts: bool, depth: bool) -> dict[str, Any] | InputError:
    """`obj` if it is a record every later stage can handle, else the error naming a bad field.

    `texts` / `depth` say whether its strings / its nesting can be bad at all (from the raw text); the walk
    uses an explicit stack, so the depth check itself cannot overflow.
    """
    if not isinstance(obj, dict):
        return InputError(f"expected a JSON object, got {type(obj).__name__}", file=path, line=line)
    if not (texts or depth):
        return obj
    stack: list[tuple[dict | list, str, int]] = [(obj, "", 1)]
    while stack:
        container, where, level = stack.pop()
        if level > MAX_DEPTH:
            # The path down there is a hundred segments long; its start says which field it is.
            shown = where if len(where) <= 60 else where[:60] + "..."
            return InputError(f"nested deeper than {MAX_DEPTH} levels", file=path, line=line, field=shown)
        children = container.items() if isinstance(container, dict) else enumerate(container)
        for key, child in children:
            # Strings are checked in place and a path is built only for a container or an error: most
            # values are strings, and this runs on every row that has a risky escape.
            if texts and isinstance(key, str):
                problem = text_problem(key)
                if problem:
                    return InputError(f"a key {problem}", file=path, line=line, field=where or None)
            if isinstance(child, str):
                problem = text_problem(child) if texts else None
                if problem:
                    return InputError(problem, file=path, line=line, field=_field(where, key))
            elif isinstance(child, (dict, list)):
                stack.append((child, _field(where, key), level + 1))
    return obj


def _field(where: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where}.{key}" if where else key


def text_problem(text: str) -> str | None:
    """Why `text` cannot be carried through thinkrm, or None. A lone surrogate (from a `\\ud800`-style
    escape) cannot be encoded as UTF-8, so no output or tokenizer can take it; a NUL character is binary
    data, not text."""
    nul = text.find("\x00")
    if nul >= 0:
        return f"contains a NUL character (\\u0000) at character {nul}"
    try:
        text.encode("utf-8")  # in C, faster than searching for the surrogate range
    except UnicodeEncodeError as e:
        return f"contains a lone surrogate (\\u{ord(text[e.start]):04x}) at character {e.start}"
    return None


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


_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def check_output_file(path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """The real location a command may write the file `path` to, or `InputError` naming `path`.

    Outputs replace only regular files: a directory, FIFO, device or socket at `path` is refused (replacing
    `/dev/full` or a FIFO a reader waits on would destroy it), and so is a parent path that is not a
    directory. A symlink is followed, so the file it points to is written and the link stays. `inputs` are
    files the command reads: writing one of them, under any name (a symlink or a hard link), is refused
    because the output would destroy the data being read.
    """
    path = Path(path)
    real = Path(os.path.realpath(path))
    try:
        st = os.stat(real)
    except FileNotFoundError:
        return real  # created by the writer, with any missing parent directories
    except NotADirectoryError:
        raise InputError("a parent of the output path is a file, not a directory", file=path) from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError("is a directory; expected a file (the output is written to a file)", file=path)
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _FILE_KINDS if test(st.st_mode)), "not a regular file")
        raise InputError(f"is {kind}, not a regular file; thinkrm writes outputs only to regular files and "
                         "never replaces anything else", file=path)
    for source in inputs:
        try:
            same = os.path.samefile(source, real)
        except OSError:  # the input does not exist (its own error comes from reading it)
            same = False
        if same:
            raise InputError(f"is the input file {source}; writing it would destroy the data being read",
                             file=path)
    return real


def check_output_dir(path: str | os.PathLike) -> Path:
    """`path` as an output directory: absent (it will be created) or a directory, else `InputError`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError("exists and is not a directory; expected a directory for the outputs", file=path)
    if not path.exists():
        check_output_file(path)  # its parents must be creatable
    return path


# Temporaries of atomic_write: mkstemp's 8 random characters between the target's name and ".tmp".
def _temporary_pattern(name: str) -> re.Pattern:
    return re.compile(rf"\.{re.escape(name)}\.[a-z0-9_]{{8}}\.tmp")


def _remove_stale_temporaries(real: Path) -> None:
    """Delete temporaries a killed `atomic_write` left beside `real` (they can be gigabytes of model weights).

    A writer holds an exclusive lock on its temporary until it is renamed into place, so a temporary whose
    lock can be taken belongs to a dead process; one still locked is a concurrent writer's and is kept.
    """
    pattern = _temporary_pattern(real.name)
    try:
        names = [n for n in os.listdir(real.parent) if pattern.fullmatch(n)]
    except OSError:
        return
    for name in names:
        stale = real.parent / name
        try:
            fd = os.open(stale, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:  # vanished, a symlink, or not ours to open: leave it
            continue
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # held by a live writer (or no locks on this file system: cannot tell, keep it)
                continue
            stale.unlink(missing_ok=True)
        finally:
            os.close(fd)


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file beside `path`; rename it onto `path` only if the block succeeds.

    `path` must be absent or a regular file (or a symlink to one, which is written through), see
    `check_output_file`; temporaries left by a killed earlier write to the same path are removed first.
    """
    path = Path(path)
    real = check_output_file(path)
    real.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(real)
    fd, tmp = tempfile.mkstemp(prefix=f".{real.name}.", suffix=".tmp", dir=real.parent)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # marks the temporary as in use (see _remove_stale_temporaries)
    except OSError:  # a file system without locks: cleanup cannot take the lock either, so it keeps the file
        pass
    # mkstemp creates 0600 files; give the result the permissions a plain open() would (outputs such as model
    # configs are often read by another user, e.g. a serving container).
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
            # Renamed while still open and locked, so no other process's cleanup ever sees it unlocked.
            os.replace(tmp, real)
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
        # Only a regular file is ever read back, truncated or deleted here (see check_output_file).
        self._real = check_output_file(self.path)
        self._real.parent.mkdir(parents=True, exist_ok=True)
        if resume and self._real.exists():
            self._recover()
        elif self._real.exists():
            self._real.unlink()  # not truncated: another hard link to the old file keeps its content
        self._f = open(self._real, "a", encoding="utf-8")

    def _recover(self) -> None:
        good = 0
        with open(self._real, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                if not raw.endswith(b"\n"):
                    break  # the torn last line of a killed run: dropped below
                try:
                    rec = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
                    # A kill tears only the unterminated last line; a bad complete line means the file is
                    # not (only) ours, and cutting it off there would throw away every finished line after it.
                    raise InputError("not a line this store wrote (invalid JSON); refusing to resume into "
                                     "this file: fix or move it", file=self.path, line=lineno) from None
                if isinstance(rec, dict) and self.key in rec:
                    self.done.add(str(rec[self.key]))
                good += len(raw)
        if good < self._real.stat().st_size:
            with open(self._real, "r+b") as f:
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
