"""`thinkrm serve`: put a scorer behind the SGLang, vLLM, OpenRLHF and thinkrm HTTP protocols."""

from __future__ import annotations

import os
from typing import Any

import typer

from .common import (
    SCORER_DECLS,
    SCORER_HELP,
    command_with,
    config_values,
    console,
    dataclass_parameters,
    user_errors,
)


def serve_cmd(**values: Any) -> None:
    """Serve a reward model over HTTP: /v1/embeddings, /classify, /get_reward, /score, /health, /metrics.

    Example: thinkrm serve --scorer hf:out/trm --port 8000, then
    curl -s localhost:8000/score -H 'content-type: application/json'
    -d '{"items": [{"prompt": "2+3?", "response": "2+3=5"}]}'
    """
    from ..scoring import load_scorer
    from ..serving.config import ServeConfig
    from ..serving.server import serve

    with user_errors():
        config = ServeConfig(**config_values(ServeConfig, values))
        loaded = load_scorer(config.scorer)
    auth = "bearer token required" if config.api_key else "no API key (set --api-key / THINKRM_API_KEY)"

    def announce(url: str) -> None:
        console.print(f"[bold]thinkrm serve[/]: {config.scorer} on {url} ({auth}); pid {os.getpid()}; "
                      "Ctrl-C or SIGTERM drains and stops", highlight=False)

    try:
        with user_errors():
            serve(config, loaded, on_ready=announce)
    finally:
        loaded.close()


def register(app: typer.Typer) -> None:
    # Every flag, its default and its help come from `ServeConfig`, so the CLI and the Python API cannot drift
    # apart; only the shared --scorer help and the API key's environment variable are added here.
    from ..serving.config import API_KEY_ENV, ServeConfig

    params = dataclass_parameters(ServeConfig, options={
        "scorer": dict(param_decls=list(SCORER_DECLS), help=SCORER_HELP),
        "api_key": dict(envvar=API_KEY_ENV, show_envvar=True),
    })
    app.command("serve")(command_with(serve_cmd, params))
