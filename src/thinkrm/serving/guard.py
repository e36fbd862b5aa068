"""The ASGI layer in front of the FastAPI app: drain, auth, body limits, UTF-8, in-flight and metrics.

It is plain ASGI rather than FastAPI middleware because it must see every request, including ones the router
rejects, and must buffer the body once to enforce the byte limit before JSON parsing starts. Its answers are
written here as raw ASGI messages, since they happen before (or instead of) the app.
"""

from __future__ import annotations

import hmac
import json
import re
import time
from collections.abc import Callable
from typing import Any

from .config import ServeConfig
from .errors import RequestProblem
from .metrics import Metrics


class Guard:
    """The ASGI layer in front of the app: drain, auth, body limits, UTF-8, in-flight and metrics.

    It is plain ASGI rather than FastAPI middleware because it must see every request, including ones the
    router rejects, and must buffer the body once to enforce the byte limit before JSON parsing starts.
    """

    def __init__(self, app: Any, config: ServeConfig, metrics: Metrics, routes: set[str]):
        self.app = app
        self.state = app.state
        self.config = config
        self.metrics = metrics
        self.routes = routes
        self._key = config.api_key.encode() if config.api_key else None

    def __getattr__(self, name: str) -> Any:  # `openapi()`, `routes`, ... of the wrapped FastAPI app
        return getattr(self.app, name)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        path = scope["path"]
        route = path if path in self.routes else "other"
        status = {"code": 500}

        async def send_tracking(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        self.metrics.in_flight += 1
        try:
            try:
                body = await self._admit(scope, receive)
            except RequestProblem as e:
                await _send_problem(send_tracking, e.status, e.message, draining=self.state.draining)
                return
            await self.app(scope, _replay(body, receive), send_tracking)
        finally:
            self.metrics.in_flight -= 1
            self.metrics.observe_request(route, status["code"], time.perf_counter() - start)

    async def _admit(self, scope: dict, receive: Callable) -> bytes:
        if self.state.draining:
            raise RequestProblem(503, "server is shutting down; retry on another replica or after restart")
        if self._key is not None and scope["path"] != "/health":
            token = _bearer(scope)
            if token is None or not hmac.compare_digest(token, self._key):
                raise RequestProblem(401, "missing or wrong API key: send the header 'Authorization: Bearer "
                                          "<key>' with the server's --api-key / $THINKRM_API_KEY")
        limit = self.config.max_body_bytes
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestProblem(413, f"request body of {int(declared)} bytes exceeds the limit of {limit} "
                                      "bytes (--max-body-bytes)")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                # Gone before the whole body came: the protocol's --body-timeout-s (it already answered
                # 408) or the client itself. Either way nothing is left to answer; the status is for metrics.
                raise RequestProblem(408 if scope.get("thinkrm.body_timeout") else 499,
                                     "client connection closed before the whole body arrived")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise RequestProblem(413, f"request body exceeds the limit of {limit} bytes "
                                          "(--max-body-bytes)")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if not body:
            return body
        kind = (_header(scope, b"content-type") or "application/json").partition(";")[0].strip().lower()
        if not (kind == "application/json" or kind.startswith("application/") and kind.endswith("+json")):
            raise RequestProblem(422, f"request body has content-type {kind!r}; every route takes JSON: send "
                                      "'Content-Type: application/json'")
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _not_utf8(body, e) from None
        return body


_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # what the surrogateescape error handler turns bad bytes into


def _not_utf8(body: bytes, error: UnicodeDecodeError) -> RequestProblem:
    """A 422 naming the JSON field that holds the first invalid byte, or the byte offset alone if the body
    does not parse as JSON around it."""
    try:
        where = _find_string(json.loads(body.decode("utf-8", "surrogateescape")), _ESCAPED_BYTE.search)
    except (ValueError, RecursionError):
        where = None
    byte = body[error.start]
    return RequestProblem(422, f"{where or 'request body'} is not valid UTF-8 (byte 0x{byte:02x} at byte "
                               f"{error.start} of the body: {error.reason}); send UTF-8 text")


def _find_string(doc: Any, bad: Callable[[str], Any], path: str = "") -> str | None:
    """The path (`items[0].response`) of the first string, key or value, in `doc` for which `bad` holds."""
    if isinstance(doc, str):
        return path if bad(doc) else None
    if isinstance(doc, dict):
        children = []
        for key, value in doc.items():
            child = f"{path}.{key}" if path else str(key)
            if bad(key):
                return f"a key in {path}" if path else "a key"
            children.append((child, value))
    elif isinstance(doc, list):
        children = [(f"{path}[{i}]", value) for i, value in enumerate(doc)]
    else:
        return None
    return next((found for child, value in children if (found := _find_string(value, bad, child))), None)


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def _bearer(scope: dict) -> bytes | None:
    value = _header(scope, b"authorization")
    if value is None:
        return None
    kind, _, token = value.partition(" ")
    return token.strip().encode("latin-1") if kind.lower() == "bearer" else None


def _replay(body: bytes, receive: Callable) -> Callable:
    """The buffered body once, then the real channel (so a client disconnect still reaches the app)."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def problem_app(status: int, message: str) -> Callable:
    """An ASGI app that answers every request with `status` and closes the connection."""
    async def app(scope: dict, receive: Callable, send: Callable) -> None:
        await _send_problem(send, status, message, draining=False)

    return app


async def _send_problem(send: Callable, status: int, message: str, *, draining: bool) -> None:
    payload = json.dumps({"detail": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    if draining:
        headers += [(b"connection", b"close"), (b"retry-after", b"1")]
    elif status in (408, 413, 431):  # the rest of the request may still be coming: the connection is spent
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
