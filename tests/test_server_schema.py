"""The server's OpenAPI spec, fuzzed: schemathesis draws requests from /openapi.json (valid and
not) and checks each answer against the spec: no 5xx, documented status codes, content types and
shapes, bad input refused, the API key enforced.  Bounded: a few examples per operation."""
from __future__ import annotations

import pytest
from _server import live_server, need

need("fastapi", "pip install 'acestep-ggml[server]'")
schemathesis = need("schemathesis", "pip install schemathesis")
hypothesis = need("hypothesis", "pip install schemathesis")

from acestep_ggml.server.app import ServerConfig, create_app  # noqa: E402

KEY = "fuzz-key"
EXAMPLES = 20  # per operation: 14 operations, about a minute in all


@pytest.fixture(scope="module")
def api_schema(synth_models):
    config = ServerConfig(models=str(synth_models[2]["f32"]), n_threads=1, api_key=KEY, max_queue=4, keep_results=4)
    with live_server(create_app(config)) as url:
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json", headers={"Authorization": f"Bearer {KEY}"})
        yield schema


# /logs streams for as long as the client listens: not a request-response operation.
schema = schemathesis.pytest.from_fixture("api_schema").exclude(path="/logs")


@schema.parametrize()
@hypothesis.settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
                     suppress_health_check=list(hypothesis.HealthCheck))
def test_every_operation_answers_as_its_spec_says(case):
    # Not positive_data_acceptance: a schema-valid request may still be refused with a 400 for what
    # a schema cannot say (a caption for this task, mp3 from these 200 Hz models, a model by name).
    case.call_and_validate(headers={"Authorization": f"Bearer {KEY}"}, timeout=30,
                           excluded_checks=[schemathesis.checks.positive_data_acceptance])
