"""The API's OpenAPI schema fuzzed with Schemathesis (property-based, Hypothesis) against the running API of a
real pipeline: no 5xx except a /generate that the caller's own ``timeout_s`` cut short (504, documented), every
status code documented, every response matching the schema."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def api_schema(pipeline):
    return schemathesis.openapi.from_url(f"{pipeline.api_url}/openapi.json")


@pytest.fixture(scope="module")
def fuzz_key(pipeline) -> str:
    return pipeline.create_key("--tenant", "fuzz")


def no_server_error(ctx, response, case) -> None:
    """A 5xx is a failure, except /generate's 504 when the caller asked for a shorter wait than an answer takes."""
    if response.status_code < 500:
        return
    if case.path == "/generate" and response.status_code == 504 and (case.body or {}).get("timeout_s") is not None:
        return
    raise AssertionError(f"{case.method} {case.path} answered {response.status_code}: {response.text[:300]}")


fuzzed = schemathesis.pytest.from_fixture("api_schema")


@fuzzed.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_schema_fuzz(case, fuzz_key):
    case.call_and_validate(headers={"Authorization": f"Bearer {fuzz_key}"}, timeout=60,
                           checks=[no_server_error, status_code_conformance, content_type_conformance,
                                   response_schema_conformance])
