"""The LLM pipeline: every stage of thinkrm that calls a chat model.

* `thinkrm.llm.client`: the one OpenAI-compatible chat client (retries, cache, token accounting, JSON
  schema) and `ask_until_valid`, the one re-ask-while-invalid loop.
* `thinkrm.llm.prompts`: every prompt text, and `clip`, the one head/tail truncator of texts put in prompts.
* `thinkrm.llm.structuring`: the `llm` and `llm-batch` DAG structurers, LLM macro-view summaries.
* `thinkrm.llm.judge`: the ME² pairwise judge (`thinkrm judge`).
* `thinkrm.llm.build_pairs`: the preference-dataset builder (`thinkrm build-pairs`).

The client's names are re-exported here (`from thinkrm.llm import LLMClient, LLMConfig`); they need only the
standard library, so `import thinkrm.llm` stays light (httpx loads when a client is opened). The other
modules are imported by their own paths.
"""

from __future__ import annotations

from .client import (
    ENV_API_KEY,
    ENV_BASE_URL,
    ENV_MODEL,
    RETRY_STATUS,
    RETRY_TEMPERATURE,
    Answer,
    Completion,
    ContextOverflowError,
    LLMAuthError,
    LLMClient,
    LLMConfig,
    LLMConnectionError,
    LLMError,
    Usage,
    ask_until_valid,
    gather_limited,
    request_key,
    retry_temperature,
)

__all__ = [
    "ENV_API_KEY", "ENV_BASE_URL", "ENV_MODEL", "RETRY_STATUS", "RETRY_TEMPERATURE", "Answer", "Completion",
    "ContextOverflowError", "LLMAuthError", "LLMClient", "LLMConfig", "LLMConnectionError", "LLMError",
    "Usage", "ask_until_valid", "gather_limited", "request_key", "retry_temperature",
]
