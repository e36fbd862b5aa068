"""The request and response bodies of every route.

They are the OpenAPI schema that clients and schemathesis read, so they are kept apart from the handlers
that fill them (`app`). The request models ignore unknown fields; the rules on their content (limits, text
checks) are in `inputs`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool


class Body(BaseModel):
    model_config = ConfigDict(extra="ignore")

class EmbeddingsRequest(Body):
    model: str | None = Field(None, description="Ignored: the server has one model; echoed back as served.")
    input: str | list[str] = Field(description='Formatted text(s), `prompt + "\\n" + reasoning`.')

class EmbeddingData(BaseModel):
    object: str = "embedding"
    index: int
    embedding: list[float] = Field(description="One element: the raw TRM score.")

class Usage(BaseModel):
    prompt_tokens: int = Field(description="Characters, not tokens: the server is tokenizer-agnostic.")
    total_tokens: int

class EmbeddingsResponse(BaseModel):
    object: str = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage

class ClassifyRequest(Body):
    model: str | None = None
    input: str | list[str] = Field(description='Formatted text(s), `prompt + "\\n" + reasoning`.')
    # Strict: pydantic would read "yes", "off" or 0 as booleans, and a typo must not change what is returned.
    use_activation: StrictBool | None = Field(None,
                                              description="true: sigmoid(score); otherwise the raw score.")

class ClassifyData(BaseModel):
    index: int
    label: str = "score"
    probs: list[float]
    num_classes: int = 1

class ClassifyResponse(BaseModel):
    object: str = "list"
    data: list[ClassifyData]
    model: str
    usage: Usage

class GetRewardRequest(Body):
    query: list[str] = Field(description="Prompt + response, as the policy rendered them.")
    prompts: list[str] | None = Field(None, description="The prompt of each query, used to cut it off.")
    labels: list[str | float | int | None] | None = Field(
        None, description="Gold answers; when given, `rewards` is the gated reward.")

class GetRewardResponse(BaseModel):
    rewards: list[float]
    scores: list[float]
    extra_logs: dict[str, list[float]]

class ScoreItem(Body):
    prompt: str
    response: str = Field(description="The model's response or just its reasoning; text after `</think>` "
                                      "is not scored.")

class ScoreRequest(Body):
    items: list[ScoreItem]
    analysis: StrictBool = Field(False, description="Also return the ME² signals of each trace.")

class ScoreResponse(BaseModel):
    scores: list[float]
    analyses: list[dict[str, Any]] | None = None

class Problem(BaseModel):
    detail: str
