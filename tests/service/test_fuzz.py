"""Property-based fuzzing of the whole OpenAPI surface (V2 included) with schemathesis, against
a real uvicorn: never a 500, a 503 only with Retry-After, responses that conform to the schema.
`make test` runs a bounded number of examples per operation; `make soak` many more
(FUZZ_EXAMPLES)."""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance

from tests.helpers import LiveServer

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
KEY = "fuzz-key"


@pytest.fixture(scope="module")
def live():
    with LiveServer(api_key=KEY) as server:
        yield server


def operations(url: str) -> list:
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    ops = []
    for result in schema.get_all_operations():
        assert not hasattr(result, "err"), f"invalid operation in the schema: {result}"
        ops.append(result.ok())
    return ops


def test_every_operation_survives_fuzzing(live) -> None:
    ops = operations(live.url)
    labels = {op.label for op in ops}
    assert "POST /v1/render" in labels and "POST /v2/models/{name}/infer" in labels
    failures: list[str] = []
    for op in ops:

        @given(case=op.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def fuzz(case) -> None:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {KEY}"}
            response = case.call(base_url=live.url, timeout=30)
            assert response.status_code < 500 or response.status_code == 503, (
                f"{case.method} {case.formatted_path}: {response.status_code} {response.text}"
            )
            if response.status_code == 503:
                assert response.headers.get("retry-after")
            # Request schemas cannot express every validity rule (what a base64 string must decode
            # to, which task a named model does), so a 4xx for schema-valid input is fine.
            case.validate_response(response, excluded_checks=[positive_data_acceptance])

        try:
            fuzz()
        except Exception as exc:  # collect, so one run reports every failing operation
            failures.append(f"{op.label}: {str(exc)[:1500]}")
    assert not failures, "\n\n".join(failures)
