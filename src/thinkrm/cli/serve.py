"""`thinkrm serve`: put a scorer behind the SGLang, vLLM, OpenRLHF and thinkrm HTTP protocols."""

from __future__ import annotations

import dataclasses
import os

import typer

from .common import console, user_errors


def _default(name: str):
    """Flag defaults come from `ServeConfig`, so the CLI and the Python API cannot drift apart."""
    from ..serve_config import ServeConfig

    return next(f.default for f in dataclasses.fields(ServeConfig) if f.name == name)


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve_cmd(
        scorer: str = typer.Option(_default("scorer"), help="Scorer spec: lite, hf:DIR, length, "
                                   "random[:SEED], vllm:URL, sglang:URL, openrlhf:URL, thinkrm:URL."),
        host: str = typer.Option(_default("host"), help="Interface to bind; 0.0.0.0 exposes it."),
        port: int = typer.Option(_default("port"), help="TCP port (0 picks a free one)."),
        api_key: str | None = typer.Option(None, envvar="THINKRM_API_KEY", show_envvar=True,
                                           help="Bearer token required on every route except /health."),
        model_name: str | None = typer.Option(None, help="The \"model\" in responses (default: spec)."),
        max_batch_size: int = typer.Option(_default("max_batch_size"),
                                           help="Most items per scorer call; 1 turns micro-batching off."),
        max_wait_ms: float = typer.Option(_default("max_wait_ms"),
                                          help="How long a request waits for others to share its batch."),
        max_body_bytes: int = typer.Option(_default("max_body_bytes"), help="Larger request bodies get 413."),
        max_items: int = typer.Option(_default("max_items"), help="More items per request get 413."),
        max_chars: int = typer.Option(_default("max_chars"), help="Longer input strings get 422."),
        alpha: float = typer.Option(_default("alpha"), help="Gated-reward weight of the TRM score."),
        verifier: str = typer.Option(_default("verifier"), help="Answer checker of /get_reward with labels: "
                                     "math, choice, llm:URL[,URL...] (env THINKRM_VERIFIER_API_KEY)."),
        normalize: str = typer.Option(_default("normalize"), help="/get_reward: how the TRM score is normalised "
                                      "before the sigmoid: auto (the scorer's calibration, else per prompt "
                                      "within a request), calibrated, group, none."),
        calibration: str | None = typer.Option(None, help="/get_reward: CENTER,SCALE or a checkpoint path, "
                                               "for a scorer without its own calibration."),
        graceful_timeout_s: float = typer.Option(_default("graceful_timeout_s"),
                                                 help="On SIGTERM, how long in-flight requests may finish."),
        max_header_bytes: int = typer.Option(_default("max_header_bytes"),
                                             help="Larger request line + headers get 431."),
        header_timeout_s: float = typer.Option(_default("header_timeout_s"),
                                               help="Seconds to send a request's headers (408)."),
        body_timeout_s: float = typer.Option(_default("body_timeout_s"),
                                             help="Seconds a client has to send a request's body (408)."),
        keep_alive_timeout_s: float = typer.Option(_default("keep_alive_timeout_s"),
                                                   help="Idle keep-alive connections close after this."),
        max_connections: int = typer.Option(_default("max_connections"),
                                            help="Open connections; at the cap the longest-idle one is "
                                            "closed to make room, else 503."),
        score_queue_items: int = typer.Option(_default("score_queue_items"),
                                              help="Items waiting for the scorer; beyond: 503."),
        verify_queue: int = typer.Option(_default("verify_queue"), help="/get_reward requests with labels "
                                         "verified or waiting; beyond, 503 + Retry-After."),
        analysis_queue: int = typer.Option(_default("analysis_queue"), help="/score requests with analysis "
                                           "running or waiting; beyond, 503 + Retry-After."),
        analysis_workers: int = typer.Option(_default("analysis_workers"),
                                             help="Processes for the ME² analysis of /score."),
        log_level: str = typer.Option(_default("log_level"), help="uvicorn log level."),
    ) -> None:
        """Serve a reward model over HTTP: /v1/embeddings, /classify, /get_reward, /score, /health, /metrics.

        Example: thinkrm serve --scorer hf:out/trm --port 8000, then
        curl -s localhost:8000/score -H 'content-type: application/json'
        -d '{"items": [{"prompt": "2+3?", "response": "2+3=5"}]}'
        """
        from ..scoring import load_scorer
        from ..serve import ServeConfig, serve

        with user_errors():
            config = ServeConfig(scorer=scorer, host=host, port=port, api_key=api_key, model_name=model_name,
                                 max_batch_size=max_batch_size, max_wait_ms=max_wait_ms,
                                 max_body_bytes=max_body_bytes, max_items=max_items, max_chars=max_chars,
                                 alpha=alpha, verifier=verifier, normalize=normalize, calibration=calibration,
                                 graceful_timeout_s=graceful_timeout_s, max_header_bytes=max_header_bytes,
                                 header_timeout_s=header_timeout_s, body_timeout_s=body_timeout_s,
                                 keep_alive_timeout_s=keep_alive_timeout_s, max_connections=max_connections,
                                 score_queue_items=score_queue_items, verify_queue=verify_queue,
                                 analysis_queue=analysis_queue, analysis_workers=analysis_workers,
                                 log_level=log_level)
            loaded = load_scorer(scorer)
        auth = "bearer token required" if config.api_key else "no API key (set --api-key / THINKRM_API_KEY)"

        def announce(url: str) -> None:
            console.print(f"[bold]thinkrm serve[/]: {scorer} on {url} ({auth}); pid {os.getpid()}; "
                          "Ctrl-C or SIGTERM drains and stops", highlight=False)

        try:
            with user_errors():
                serve(config, loaded, on_ready=announce)
        finally:
            loaded.close()
