"""A scripted OpenAI-compatible chat server on 127.0.0.1 for the LLM pipeline tests.

It is a real HTTP server (stdlib `ThreadingHTTPServer` in a thread), so the client's real httpx stack, retries,
timeouts and JSON handling are exercised. A *script* decides each reply from the request body: a function
`script(body, n) -> Reply`, `n` counting requests so far. Every request body is recorded in `requests`.
Chat requests (`messages`) get chat completions, legacy completion requests (`prompt`, what the LLM
verifier sends) get text completions, and `GET /v1/models` lists `models`.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


@dataclass
class Reply:
    text: str = ""
    status: int = 200
    delay: float = 0.0
    error: str = ""  # error message for non-200 replies
    headers: dict[str, str] = field(default_factory=dict)
    usage: tuple[int, int] | None = None  # (prompt, completion) tokens; default: whitespace word counts
    reasoning: str | None = None  # sent as `reasoning_content`, as servers with a reasoning parser do


Script = Callable[[dict[str, Any], int], Reply]


class ScriptedServer:
    def __init__(self, script: Script, api_key: str | None = None, reject_response_format: bool = False,
                 models: tuple[str, ...] = ("scripted-model",)):
        self.script = script
        self.models = models
        self.api_key = api_key
        self.reject_response_format = reject_response_format
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                try:
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (the timeout tests): there is no one to answer

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    return self._send(200, {"object": "list",
                                            "data": [{"id": m, "object": "model"} for m in server.models]})
                self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if server.api_key and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    return self._send(401, {"error": {"message": "Incorrect API key provided"}})
                if server.reject_response_format and "response_format" in body:
                    return self._send(400, {"error": {"message": "response_format is not supported"}})
                with server._lock:
                    n = len(server.requests)
                    server.requests.append(body)
                reply = server.script(body, n)
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.status != 200:
                    return self._send(reply.status, {"error": {"message": reply.error or "scripted error"}},
                                      reply.headers)
                if "prompt" in body:
                    prompt_tokens, completion_tokens = reply.usage or (len(body["prompt"].split()),
                                                                       len(reply.text.split()))
                    return self._send(200, {
                        "id": f"cmpl-{n}", "object": "text_completion", "model": body["model"],
                        "choices": [{"index": 0, "finish_reason": "stop", "text": reply.text}],
                        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                  "total_tokens": prompt_tokens + completion_tokens},
                    })
                words = sum(len(m["content"].split()) for m in body["messages"])
                prompt_tokens, completion_tokens = reply.usage or (words, len(reply.text.split()))
                self._send(200, {
                    "id": f"cmpl-{n}", "object": "chat.completion", "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": reply.text,
                                             **({"reasoning_content": reply.reasoning} if reply.reasoning else {})}}],
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                              "total_tokens": prompt_tokens + completion_tokens},
                })

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        # A short poll interval: shutdown() waits for it, and tests start many servers.
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# ---- judge scripts ------------------------------------------------------------------------------------

_TRACE = re.compile(r"=== Trace (\d) ===\n(.*?)\n=== End of Trace \1 ===", re.S)


def traces_in(body: dict[str, Any]) -> dict[str, str]:
    """The two traces shown in a judge request, by their label ("1", "2")."""
    return dict(_TRACE.findall(body["messages"][-1]["content"]))


def prefers(marker: str) -> Script:
    """A consistent judge: picks the trace containing `marker`, whatever the order or dimension."""
    def script(body: dict[str, Any], n: int) -> Reply:
        shown = traces_in(body)
        pick = next((k for k, v in shown.items() if marker in v), None)
        label = f"Trace {pick}" if pick else "Tie"
        return Reply(f"Trace {pick or '?'} looks more disciplined.\n<|decision|>{label}")
    return script


def always(label: str) -> Script:
    """A position-biased judge that always gives the same label."""
    return lambda body, n: Reply(f"The first one reads well.\n<|decision|>{label}")
