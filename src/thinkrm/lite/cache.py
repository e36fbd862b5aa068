"""The embedding and parse cache: training re-reads the same ~100k segments many times, scoring never.

Entries are keyed by a hash of their input (and, for parsed traces, of the code that parsed them); shards are
npz files of plain arrays in a folder of this user's only, so loading a cache can never run code.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..formatting import Item
from ..io import InputError
from .config import LiteConfig

# What `features.parse` reads: a shard made by other versions of these files holds other features. Whole files
# are hashed, not just `parse`: an unrelated edit costs one re-parse (~15 s), a missed dependency a model
# trained on stale features.
_PARSE_CODE = ("lite/config.py", "lite/features.py", "lite/cache.py", "steps.py", "delimiters.py",
               "data/delimiters.json", "dag.py", "structurers.py", "me2.py", "arithmetic.py", "verify.py",
               "trace.py")


@functools.lru_cache(maxsize=1)
def parse_code_version() -> str:
    """A hash of the code behind the parsed features, so a changed ME² signal is never read from a stale cache
    (the embeddings depend only on MiniLM and stay valid)."""
    from importlib.resources import files

    h = hashlib.sha1()
    for name in _PARSE_CODE:
        h.update(files("thinkrm").joinpath(name).read_bytes())
    return h.hexdigest()[:16]


def default_cache_dir() -> Path:
    """`$THINKRM_LITE_CACHE`, else the user's cache folder: `$XDG_CACHE_HOME/thinkrm/lite` (by default
    `~/.cache/thinkrm/lite`)."""
    if os.environ.get("THINKRM_LITE_CACHE"):
        return Path(os.environ["THINKRM_LITE_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"  # a relative value is invalid (XDG)
    return base / "thinkrm" / "lite"


def _private_cache_dir(path: str | os.PathLike) -> Path:
    """`path`, created readable and writable by this user only if it is missing.

    Cache shards are read back as this user's own work, so a folder that another user owns or may write to
    (a predictable name in /tmp, planted before the first run) is refused, not trusted.
    """
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if hasattr(os, "getuid"):  # POSIX owners and modes; elsewhere the user's profile folder is private
        st = path.stat()
        if st.st_uid != os.getuid():
            raise ValueError(f"{path}: the TRM-lite cache folder belongs to another user (uid {st.st_uid}); "
                             "set THINKRM_LITE_CACHE to a folder of your own")
        if st.st_mode & 0o022:
            raise ValueError(f"{path}: the TRM-lite cache folder is writable by other users (mode "
                             f"{st.st_mode & 0o777:o}); run `chmod go-w` on it or set THINKRM_LITE_CACHE")
    return path


def _pack_parsed(entries: dict[bytes, tuple[list[str], np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """Parsed traces (`parse`) as plain arrays, so a shard is data that loading cannot run: the keys, every
    segment text in one UTF-8 blob with its byte length, each trace's segment count, and the stacked rows."""
    values = list(entries.values())
    texts = [t.encode("utf-8", "surrogatepass") for seg_texts, _, _ in values for t in seg_texts]
    return {"keys": np.frombuffer(b"".join(entries), dtype="S20"),
            "counts": np.array([len(v[0]) for v in values], dtype=np.int64),
            "text_bytes": np.array([len(t) for t in texts], dtype=np.int64),
            "text_blob": np.frombuffer(b"".join(texts), dtype=np.uint8),
            "pos": np.concatenate([v[1] for v in values]), "glob": np.stack([v[2] for v in values])}


def _unpack_parsed(z: Any) -> dict[bytes, tuple[list[str], np.ndarray, np.ndarray]]:
    blob, ends = z["text_blob"].tobytes(), np.cumsum(z["text_bytes"]).tolist()
    texts = [blob[end - n:end].decode("utf-8", "surrogatepass") for end, n in zip(ends, z["text_bytes"].tolist())]
    pos, out, first = z["pos"], {}, 0
    for key, n, glob in zip(z["keys"], z["counts"].tolist(), z["glob"]):
        out[bytes(key).ljust(20, b"\0")] = (texts[first:first + n], pos[first:first + n], glob)
        first += n
    return out


class Embedder:
    """MiniLM embeddings of text openings (and parsed traces), optionally memoised in memory and on disk.

    Scoring needs no memory (every trace is new, and a server must not grow without bound); training and
    ablations re-read the same ~100k segments many times, so `cache_dir` keeps them across runs (outside
    the repository: `default_cache_dir()`; a folder of this user's only, see `_private_cache_dir`). Entries
    are keyed by a hash of (token limit, text), and every shard is an npz of plain arrays.
    """

    def __init__(self, cache_dir: str | os.PathLike | None = None, batch_size: int = 64):
        self.cache_dir = _private_cache_dir(cache_dir) if cache_dir else None
        self.batch_size = batch_size
        self._mem: dict[bytes, np.ndarray] = {}
        self._parsed: dict[bytes, Any] = {}
        self._loaded: set[str] = set()
        self._refresh()

    def _refresh(self) -> None:
        """Load shards written since the last look (another process may be filling the same cache)."""
        if not (self.cache_dir and self.cache_dir.is_dir()):
            return
        # Parsed shards are named by the version of the code that made them; other versions' are not loaded.
        parsed = sorted(self.cache_dir.glob(f"parsed_{parse_code_version()}-*.npz"))
        for shard in sorted(self.cache_dir.glob("emb-*.npz")) + parsed:
            if shard.name in self._loaded:
                continue
            self._loaded.add(shard.name)
            try:
                with np.load(shard, allow_pickle=False) as z:
                    if shard.name.startswith("parsed_"):
                        self._parsed.update(_unpack_parsed(z))
                        continue
                    for k, v in zip(z["keys"], z["vecs"]):
                        self._mem[bytes(k).ljust(20, b"\0")] = v  # numpy drops trailing NULs of "S20"
            except (ValueError, KeyError, OSError, zipfile.BadZipFile) as e:
                raise InputError(f"not a TRM-lite cache shard ({type(e).__name__}: {e}); delete the file",
                                 file=shard) from None

    def _save(self, name: str, keys: Iterable[bytes], write: Any) -> None:
        """Write one shard atomically (a reader in another process never sees half of it)."""
        from ..io import atomic_write

        stem, _, suffix = name.partition(".")
        name = f"{stem}-{hashlib.sha1(b''.join(keys)).hexdigest()[:16]}.{suffix}"
        self._loaded.add(name)
        with atomic_write(self.cache_dir / name, "wb") as f:
            write(f)

    def parsed_items(self, items: Sequence[Item], config: LiteConfig, parse: Any) -> list[Any]:
        """`parse(item, config)` for each item, memoised on disk next to the embeddings when caching."""
        if not self.cache_dir:
            return [parse(it, config) for it in items]
        # Every setting `features.parse` reads: a version-1 and a version-2 parse of one trace differ in shape.
        settings = json.dumps([config.segment_tokens, config.max_segments, config.use_structure, config.signals,
                               config.features])
        keys = [hashlib.sha1(f"{settings}\x00{it.prompt}\x00{it.reasoning}".encode("utf-8", "surrogatepass")).digest()
                for it in items]
        if any(k not in self._parsed for k in keys):
            self._refresh()
        new = {k: parse(it, config) for k, it in zip(keys, items) if k not in self._parsed}
        if new:
            self._parsed.update(new)
            self._save(f"parsed_{parse_code_version()}.npz", new, lambda f: np.savez(f, **_pack_parsed(new)))
        return [self._parsed[k] for k in keys]

    @staticmethod
    def _key(text: str, tokens: int) -> bytes:
        return hashlib.sha1(f"{tokens}\x00{text}".encode("utf-8", "surrogatepass")).digest()

    def encode(self, texts: Sequence[str], tokens: int, chunk: int = 2048) -> np.ndarray:
        """(len(texts), 384) float32; each distinct text is encoded once (chunks are saved as they finish)."""
        from ..embed import get_encoder

        keys = [self._key(t, tokens) for t in texts]
        if self.cache_dir and any(k not in self._mem for k in keys):
            self._refresh()
        found = {k: self._mem[k] for k in keys if k in self._mem}
        todo = list({k: t for k, t in zip(keys, texts) if k not in found}.items())
        for b in range(0, len(todo), chunk):
            part = todo[b:b + chunk]
            vecs = get_encoder().encode([t for _, t in part], batch_size=self.batch_size, max_tokens=tokens)
            found.update((k, v) for (k, _), v in zip(part, vecs))
            if self.cache_dir:
                self._mem.update((k, v) for (k, _), v in zip(part, vecs))
                packed = np.frombuffer(b"".join(k for k, _ in part), dtype="S20")
                self._save("emb.npz", (k for k, _ in part),
                           lambda f, packed=packed, vecs=vecs: np.savez(f, keys=packed, vecs=vecs))
        out = np.zeros((len(texts), 384), dtype=np.float32)
        for i, k in enumerate(keys):
            out[i] = found[k]
        return out
