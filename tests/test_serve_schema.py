"""schemathesis against the live server's /openapi.json: no generated input may cause a 5xx.

Every operation gets schema-valid and schema-violating bodies (wrong types, missing fields, odd unicode,
huge numbers); the server must answer each with a documented status, a matching content type, a body
that fits the schema, and never a server error.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from thinkrm.scoring import LengthScorer
from thinkrm.serving import ServeConfig, create_app, running

KEY = "schema-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHECKS = [schemathesis.checks.not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


@pytest.fixture(scope="module")
def live_schema():
    # Small limits so generated inputs also run into them (413/422 paths) instead of only the happy path.
    config = ServeConfig(port=0, api_key=KEY, max_items=20, max_chars=500, max_body_bytes=50_000)
    with running(LengthScorer(), config) as url:
        yield schemathesis.openapi.from_url(f"{url}/openapi.json", headers=AUTH)


# The operations, read from the same app offline so that a new endpoint is fuzzed without editing this file.
# Operations without a body (GET /health, /metrics) have nothing to get wrong, so only valid calls for them.
OPERATIONS = [(method.upper(), path, mode)
              for path, methods in create_app(LengthScorer()).openapi()["paths"].items()
              for method, spec in methods.items()
              for mode in ([GenerationMode.POSITIVE, GenerationMode.NEGATIVE] if "requestBody" in spec
                           else [GenerationMode.POSITIVE])]


@pytest.mark.slow
@pytest.mark.parametrize("method, path, mode", OPERATIONS)
def test_no_generated_input_causes_a_server_error(live_schema, method, path, mode):
    operation = live_schema[path][method]

    @given(operation.as_strategy(generation_mode=mode))
    @settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              database=None)
    def check(case):
        case.call_and_validate(headers=AUTH, checks=CHECKS)

    check()
