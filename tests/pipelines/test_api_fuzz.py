"""Property-based fuzzing of the whole HTTP API from its own OpenAPI schema (schemathesis).

Every operation gets schema-valid and schema-violating requests, against the app in-process
over a real tiny bundle, in three set-ups: no keys configured, keys configured and the admin
key sent, keys configured and no key sent. No answer may be a 5xx, and every answer must match
the schema: a documented status code, content type and body.
"""

import collections

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.config._checks import NegativeDataRejectionConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from pipelines.serving.app import create_app
from pipelines.serving.auth import KeyRing
from tests.tiny import ADMIN_KEY, KEY_ENV

EXAMPLES_PER_OPERATION = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
]
SETUPS = {"open": ({}, None), "keyed-admin": (KEY_ENV, ADMIN_KEY), "keyed-no-key": (KEY_ENV, None)}
STATUSES: collections.Counter = collections.Counter()


@pytest.fixture(scope="module")
def fuzzed_service(load_tiny_service):
    service = load_tiny_service("fuzz")
    yield service
    total = sum(STATUSES.values())
    print(f"\nfuzzed {total} requests; statuses {dict(sorted(STATUSES.items()))}")


def _operations(app):
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    # A schema-violating body may also be refused for its size, which is a refusal too.
    schema.config.checks.negative_data_rejection = NegativeDataRejectionConfig(
        expected_statuses=[400, 401, 403, 413, 415, 422]
    )
    return [result.ok() for result in schema.get_all_operations()]


# schemathesis' own pytest plugin does not run under pytest 9 ('Function' has no '_nodeid'):
# each operation's strategy is driven by Hypothesis directly instead.
@pytest.mark.parametrize("setup_name", sorted(SETUPS))
def test_no_request_gives_a_5xx_or_breaks_the_schema(setup_name, fuzzed_service, serving_platform):
    environ, key = SETUPS[setup_name]
    config = serving_platform[1].serving
    app = create_app(fuzzed_service, config, KeyRing(config, environ))
    headers = {"X-API-Key": key} if key else {}
    operations = _operations(app)
    assert len(operations) == 16
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz(operation, mode, headers, setup_name)


def _fuzz(operation, mode, headers: dict[str, str], setup_name: str) -> None:
    protected = bool(operation.definition.raw.get("x-required-scope"))

    @given(operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case):
        response = case.call_and_validate(headers=headers, checks=CHECKS)
        STATUSES[(setup_name, response.status_code)] += 1
        if setup_name == "keyed-no-key" and protected:
            assert response.status_code == 401, response.text

    try:
        fuzz()
    except Unsatisfiable:
        # An operation without inputs (/healthz, /metrics) has no schema-violating request.
        assert (
            mode is GenerationMode.NEGATIVE
            and not operation.definition.raw.get("parameters")
            and "requestBody" not in operation.definition.raw
        )
