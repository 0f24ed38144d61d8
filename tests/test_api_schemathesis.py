"""Schemathesis against the served OpenAPI schema, with every check it has.

Generates valid (positive) and invalid (negative) requests for every operation of
`create_app` over real Redis and PostgreSQL, with a small example budget per
operation and a time limit for the whole run, and runs all of schemathesis' checks on
each response: not a server error, documented status codes, content types, bodies and
headers, invalid data rejected, valid data (the schema's own examples included)
accepted, unsupported methods answered 405 with the path's full `Allow` header.

One allowance: which function names a process registers, and which arguments each one
binds, is no part of a static schema, so a schema-valid body naming an unknown function
or misfitting arguments is a 422 by design (positive data may get 422).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.config._checks import NegativeDataRejectionConfig, PositiveDataAcceptanceConfig
from schemathesis.generation import GenerationMode
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from agentsched.api import create_app
from agentsched.settings import Settings

MAX_EXAMPLES = 50
TIME_LIMIT = 75.0  # seconds for the whole run; pytest's per-test timeout is 120
CHECKS: list[Callable[..., Any]] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@pytest.fixture
def schema(settings: Settings) -> Iterator[Any]:
    """The schema served by `create_app(settings)`; its lifespan ends with the test."""
    app = create_app(settings, tasks_files=[])
    try:
        loaded = schemathesis.openapi.from_asgi("/openapi.json", app)
        accepted = [*PositiveDataAcceptanceConfig().expected_statuses, "422"]
        loaded.config.checks.positive_data_acceptance = PositiveDataAcceptanceConfig(
            expected_statuses=accepted
        )
        # A body over the size cap is refused before it is parsed: 413 is a rejection too
        # (a batch of more items than allowed is often that big).
        rejected = [*NegativeDataRejectionConfig().expected_statuses, "413"]
        loaded.config.checks.negative_data_rejection = NegativeDataRejectionConfig(
            expected_statuses=rejected
        )
        yield loaded
    finally:
        shutdown_lifespans()  # closes the app's connections on schemathesis' event loop


def fuzz(operation: Any, mode: GenerationMode, checks: list[Callable[..., Any]]) -> None:
    """Run `MAX_EXAMPLES` generated requests of one operation through the checks."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis_settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,  # the same cases on every run: a failure reproduces
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        case.call_and_validate(additional_checks=checks)  # on top of every built-in check

    run()


def test_no_server_errors_and_responses_match_the_schema(schema: Any) -> None:
    deadline = time.monotonic() + TIME_LIMIT
    operations = [result.ok() for result in schema.get_all_operations()]
    # An endless stream cannot be fuzzed through ASGI: test_api_events.py covers it.
    operations = [op for op in operations if not op.path.endswith("/events/stream")]
    assert len(operations) == 22  # 15, and 7 the dashboard reads (routes_dashboard.py)
    negative = [*CHECKS, negative_data_rejection]
    for mode, checks in ((GenerationMode.POSITIVE, CHECKS), (GenerationMode.NEGATIVE, negative)):
        for operation in operations:
            if time.monotonic() > deadline:
                return  # the budget is spent; what ran has passed
            try:
                fuzz(operation, mode, checks)
            except Unsatisfiable:
                # No parameter or body to break (GET /functions, GET /health).
                assert mode is GenerationMode.NEGATIVE, operation.label
