"""`thinkrm.Client`: Python access to a running `thinkrm serve`.

The client *is* the `thinkrm:URL` scorer (`thinkrm.remote.ThinkrmScorer`) plus the two calls a scorer has no
place for: the ME² analysis and the health probe. So it shares that scorer's transport (chunking, bounded
concurrency, retries with backoff on connection errors, 429 and 5xx including the 503 of a draining server,
clear errors) and can be passed anywhere a `Scorer` is expected.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .formatting import Item
from .remote import ServerResponseError, ThinkrmScorer


class Client(ThinkrmScorer):
    """A `thinkrm serve` endpoint.

        client = thinkrm.Client("http://127.0.0.1:8000")  # api_key defaults to $THINKRM_API_KEY
        client.score([("What is 2+3?", "2 + 3 = 5.")])     # -> [raw score]
        client.analyze([("What is 2+3?", "2 + 3 = 5.")])   # -> [{"score": ..., "me2": {...}}]

    Items are (prompt, reasoning) pairs; the reasoning may also be a whole response, in which case the
    server scores only the part before `</think>`. Options (`batch_size`, `concurrency`, `timeout`, `retries`,
    `backoff`) are those of the remote scorers.
    """

    def __init__(self, url: str, api_key: str | None = None, **options: Any):
        super().__init__(url, api_key=api_key, **options)
        self.spec = f"thinkrm:{self.base_url}"

    def analyze(self, items: Sequence[Item | tuple[str, str]]) -> list[dict[str, Any]]:
        """Score and analyse each item: `[{"score": float, "me2": {...}}, ...]`, in order.

        `me2` is the ME² analysis (signals per dimension, size, findings), the same record `thinkrm analyze`
        writes under `me2`.
        """
        items = [Item(*it) for it in items]
        chunks = [items[i:i + self.batch_size] for i in range(0, len(items), self.batch_size)]
        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(chunks)))) as pool:
            return [row for rows in pool.map(self._analyze_chunk, chunks) for row in rows]

    def _analyze_chunk(self, items: list[Item]) -> list[dict[str, Any]]:
        payload = {"items": [{"prompt": p, "response": r} for p, r in items], "analysis": True}
        url, body = self.pool.post_json(self.endpoint, payload)
        try:
            scores, analyses = body["scores"], body["analyses"]
            if not (isinstance(scores, list) and isinstance(analyses, list)
                    and len(scores) == len(analyses) == len(items)):
                raise ValueError(f"expected {len(items)} scores and analyses")
        except (KeyError, TypeError, ValueError) as e:
            raise ServerResponseError(url, f"unexpected answer to an analysis request ({e})", status=200,
                                      body=str(body)) from None
        return [{"score": float(s), "me2": a} for s, a in zip(scores, analyses)]

    def health(self) -> dict[str, Any]:
        """The server's `/health` answer (`status`, `scorer`, `model`, `version`); raises if unreachable."""
        import httpx

        url = self.base_url + "/health"
        try:
            resp = self.pool.client.get(url)
        except httpx.TransportError as e:
            raise ConnectionError(f"cannot reach {url}: {e}") from None
        if resp.status_code != 200:
            raise ServerResponseError(url, "not healthy", status=resp.status_code, body=resp.content)
        return resp.json()

    def __repr__(self) -> str:
        return f"Client({self.base_url!r})"
