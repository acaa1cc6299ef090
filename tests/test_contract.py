"""The API's contract: a property-based run (schemathesis) against the server's own OpenAPI document.

Every operation gets schema-valid requests (positive) and schema-invalid ones (negative), each checked by all of
schemathesis's response checks (documented status codes, content types, response schemas, invalid data rejected)
and by two stricter ones of ours: no 5xx except a 503 or 504 the operation documents, and a schema-valid request
is never rejected except by the limits JSON Schema cannot state (crossway.server.UNSTATED_LIMITS, named in the
operation's description), its body's bytes (413), or another task's endpoint (404 wrong_task).
"""

from __future__ import annotations

import os

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from crossway.server import ServeConfig, create_app
from crossway.server_text import UNSTATED_LIMITS, TextEngine
from tests.servers import running, wait_ready

# examples per operation and generation mode; `CROSSWAY_CONTRACT_EXAMPLES=500 pytest tests/test_contract.py` for
# the full run
EXAMPLES = int(os.environ.get("CROSSWAY_CONTRACT_EXAMPLES", "40"))


class ContractBroken(AssertionError):
    pass


def only_documented_server_errors(ctx, response, case) -> None:
    if response.status_code >= 500 and response.status_code not in (503, 504):
        raise ContractBroken(f"{case.method} {case.path}: {response.status_code} {response.text[:300]}")


def valid_requests_accepted(ctx, response, case) -> None:
    if case.meta is None or case.meta.generation.mode != GenerationMode.POSITIVE or response.status_code < 400:
        return
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = None
    allowed = (response.status_code in (503, 504)  # busy or past its deadline: documented, and not a refusal
               or response.status_code == 422 and code in UNSTATED_LIMITS
               or response.status_code == 413 and code == "body_too_large"
               or response.status_code == 404 and code == "wrong_task")
    if not allowed:
        raise ContractBroken(f"a schema-valid request was refused: {case.method} {case.path} -> "
                             f"{response.status_code} {response.text[:300]}")


@pytest.fixture(scope="module")
def server(served_runs):
    cfg = ServeConfig(max_inputs=4, max_beam_size=8, max_output_tokens=64, timeout_s=20)
    app = create_app(lambda: TextEngine.load(served_runs["rnn"], cfg), cfg)
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        wait_ready(client)
        yield url


def test_the_openapi_document_states_the_limits(server):
    doc = httpx.get(server + "/openapi.json").json()
    inputs = doc["components"]["schemas"]["TranslateRequest"]["properties"]["inputs"]
    assert inputs["maxItems"] == 4 and inputs["items"]["minLength"] == 1
    responses = doc["paths"]["/v1/translate"]["post"]["responses"]
    assert {"200", "413", "422", "429", "503", "504"} <= set(responses)
    assert "properties" in doc["components"]["schemas"]["TranslateResponse"]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_operation_keeps_the_contract(server, mode):
    schema = schemathesis.openapi.from_url(server + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/translate", "/v1/info", "/health/ready", "/v1/segment"}
    calls = []
    for op in operations:
        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy(generation_mode=mode))
        def run(case):
            response = case.call_and_validate(base_url=server, excluded_checks=[not_a_server_error,
                                                                                positive_data_acceptance],
                                              additional_checks=[only_documented_server_errors,
                                                                 valid_requests_accepted])
            calls.append(response.status_code)

        try:
            run()
        except Unsatisfiable:  # negative data for an operation that takes no input at all
            assert mode == GenerationMode.NEGATIVE and not op.body and not op.query, op.path
    assert len(calls) >= EXAMPLES
