"""`thinkrm serve`: one HTTP server that RL and evaluation frameworks call unchanged.

A trained TRM is only useful in training loops if the loop can reach it, and every framework already speaks a
protocol: verl and the reference TRM serving talk to SGLang's `/v1/embeddings`, vLLM clients to `/classify`,
OpenRLHF to `/get_reward`. This server answers all of them (plus our own `/score`) from any `Scorer`, so a
user swaps the backend without touching the trainer.

Three properties matter more than the protocols:

* **Throughput under concurrency.** RL rollouts fire hundreds of small requests at once. Requests that arrive
  together are merged into one `Scorer.score` call (dynamic micro-batching), which a model answers in
  roughly the time of one; inference runs in a single worker thread so the event loop keeps accepting.
* **Bad input never kills the server.** Limits on body size, items and characters, UTF-8 and JSON checks
  run before any scoring, and every rejection is a 4xx whose `detail` names the field or the limit.
* **Restarts do not drop rewards.** On SIGTERM/SIGINT the server keeps its socket open while in-flight
  requests finish, answering newcomers 503 (so load balancers and clients retry elsewhere), then exits.

The package, one concept per module, from the outside in:

* `config` - `ServeConfig`, the settings (light: the CLI builds its flags from it without the server stack);
* `server` - binding the socket and running uvicorn with graceful drain (`serve`, `running`, `make_server`);
* `protocol` - connection limits below the app, in uvicorn's HTTP protocol (header size, timeouts, the cap);
* `guard` - the ASGI layer in front of the app (drain, auth, body limits, UTF-8, metrics);
* `app` - `create_app`: the FastAPI routes of each protocol;
* `schemas` - the request and response bodies (the OpenAPI schema);
* `inputs` - the rules a request's content must follow, and how formatted text splits into
  (prompt, reasoning);
* `batcher` - dynamic micro-batching of scorer calls; `work` - bounded queues for verification and analysis;
* `metrics` - the Prometheus counters; `errors` - the exceptions that become HTTP errors.

Importing this package is cheap: the names below load their module on first use.
"""

from __future__ import annotations

from .. import _lazy_attributes

_EXPORTS = {name: f"{__name__}.{module}" for name, module in {
    "ServeConfig": "config",
    "API_KEY_ENV": "config",
    "create_app": "app",
    "make_server": "server",
    "bind": "server",
    "serve": "server",
    "running": "server",
    "split_formatted": "inputs",
    "MicroBatcher": "batcher",
    "Metrics": "metrics",
}.items()}

__all__ = list(_EXPORTS)
__getattr__, __dir__ = _lazy_attributes(globals(), _EXPORTS)
