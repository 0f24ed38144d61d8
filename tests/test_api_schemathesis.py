"""Schemathesis against the served OpenAPI schema, with every check it has.

Generates valid (positive) and invalid (negative) requests for every operation of
`create_app` over real Redis and PostgreSQL and runs all of schemathesis' checks on
each response: not a server error, documented status codes, content types, bodies and
headers, invalid data rejected, valid data (the schema's own examples included)
accepted, unsupported methods answered 405 with the path's full `Allow` header. A
stateful run then chains calls along the OpenAPI links the API declares (a created
execution is read and cancelled by its id; a created schedule is read, patched, run,
enabled, disabled and deleted; a run's execution is read and cancelled), with the same
checks plus the stateful ones (a deleted schedule is gone, a created one is there).

The budget is a number of examples, not a time: `MAX_EXAMPLES` per operation and mode,
`SCENARIOS` stateful scenarios of at most `STEPS` calls, derandomized, so every run
does the same work and none can pass having tested less (a time limit did: it returned
early, passing, when a busy machine was slow). Each test asserts that its work was done
(every operation got examples, every declared link was followed to a 2xx answer). The
fuzzing is one test per OpenAPI tag and mode, so each piece stays well inside pytest's
120 s timeout on a busy 2-core machine (at most about 5 s when idle, 16 s under the
suite's 4 workers); a run slower than that fails by the timeout, it does not pass.

One allowance: which function names a process registers, and which arguments each one
binds, is no part of a static schema, so a schema-valid body naming an unknown function
or misfitting arguments is a 422 by design (positive data may get 422).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from hypothesis.stateful import Bundle, MultipleResults, initialize, multiple
from schemathesis.checks import CHECKS as REGISTERED_CHECKS
from schemathesis.checks import is_check_class, not_a_server_error
from schemathesis.config._checks import NegativeDataRejectionConfig, PositiveDataAcceptanceConfig
from schemathesis.generation import GenerationMode
from schemathesis.generation.stateful.state_machine import StepInput, StepOutput
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
SCENARIOS, STEPS = 100, 8
# Fuzzed operations by OpenAPI tag (routes_*.py): a new operation must be counted here.
TAGS = {"tasks": 8, "executions": 5, "dashboard": 7, "system": 2}
PREFIX = "/api/scheduler"
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


def fuzz(operation: Any, mode: GenerationMode, checks: list[Callable[..., Any]]) -> int:
    """Run up to `MAX_EXAMPLES` generated requests of one operation through the checks;
    returns how many ran."""
    ran = 0

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
        nonlocal ran
        ran += 1
        case.call_and_validate(additional_checks=checks)  # on top of every built-in check

    run()
    return ran


def fuzzed(schema: Any, tag: str | None = None) -> list[Any]:
    """The operations fuzzed (of one OpenAPI tag): all but the endless event stream, which
    cannot be read through ASGI (test_api_events.py covers it)."""
    operations = [result.ok() for result in schema.get_all_operations()]
    return [op for op in operations if not op.path.endswith("/events/stream")
            and tag in (None, *op.definition.raw.get("tags", []))]  # fmt: skip


def test_every_operation_is_in_a_fuzzed_group(schema: Any) -> None:
    assert sum(TAGS.values()) == len(fuzzed(schema)) == 22  # 7 the dashboard reads
    assert {tag: len(fuzzed(schema, tag)) for tag in TAGS} == TAGS


# One test per group and mode: the same work as one test, in pieces that fit the timeout.
@pytest.mark.parametrize("tag", TAGS)
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_no_server_errors_and_responses_match_the_schema(
    schema: Any, mode: GenerationMode, tag: str
) -> None:
    operations = fuzzed(schema, tag)
    assert len(operations) == TAGS[tag]
    checks = CHECKS if mode is GenerationMode.POSITIVE else [*CHECKS, negative_data_rejection]
    examples: dict[str, int] = {}
    for operation in operations:
        try:
            examples[operation.label] = fuzz(operation, mode, checks)
        except Unsatisfiable:
            # No parameter or body that can be broken (GET /functions, GET /health, an
            # unconstrained string in the path): no negative request exists.
            assert mode is GenerationMode.NEGATIVE, operation.label
    unexamined = sorted(label for label, count in examples.items() if count == 0)
    assert not unexamined, f"no {mode} example ran for {unexamined}"
    if mode is GenerationMode.POSITIVE:
        assert len(examples) == len(operations)


def declared_links(raw: dict[str, Any]) -> set[tuple[str, str]]:
    """(source, target) operation labels of every OpenAPI link in a schema."""
    labels = {
        operation["operationId"]: f"{method.upper()} {path}"
        for path, operations in raw["paths"].items()
        for method, operation in operations.items()
    }
    return {
        (f"{method.upper()} {path}", labels[link["operationId"]])
        for path, operations in raw["paths"].items()
        for method, operation in operations.items()
        for response in operation["responses"].values()
        for link in response.get("links", {}).values()
    }


def test_linked_operations_chain_statefully(schema: Any) -> None:
    links = declared_links(schema.raw_schema)
    tasks, executions = f"{PREFIX}/tasks", f"{PREFIX}/executions"
    by_task_id = [f"{m} {tasks}/{{task_id}}" for m in ("GET", "PATCH", "DELETE")]
    by_task_id += [f"POST {tasks}/{{task_id}}/{verb}" for verb in ("run", "enable", "disable")]
    by_execution_id = [f"GET {executions}/{{execution_id}}",
                       f"POST {executions}/{{execution_id}}/cancel"]  # fmt: skip
    assert links == {
        *((f"POST {tasks}", target) for target in by_task_id),
        *((f"POST {executions}", target) for target in by_execution_id),
        *((f"POST {tasks}/{{task_id}}/run", target) for target in by_execution_id),
    }
    # Only the links the API declares, none that schemathesis would infer.
    schema.config.phases.stateful.inference.algorithms = []
    workflow, followed, checked = schema.as_state_machine(), Counter[tuple[str, str]](), set()
    delete_task = schema[tasks + "/{task_id}"]["DELETE"]
    components = schema.raw_schema["components"]["schemas"]

    @schema.hook
    def after_validate(context: Any, case: Any, response: Any, results: list[Any]) -> None:
        checked.update(result.name for result in results)

    class Scenario(workflow):  # type: ignore[misc, valid-type]
        """Each scenario starts from a schedule (and a run of it) and an execution made
        from the schema's own first examples: random bodies rarely name a registered
        function, so few scenarios would reach a link otherwise. Every later call is
        generated."""

        seeded = Bundle("seeded")

        def setup(self) -> None:
            self.created: list[str] = []

        def teardown(self) -> None:
            # Schedule names are unique: a replayed scenario must find the same state.
            for task_id in self.created:
                delete_task.Case(path_parameters={"task_id": task_id}).call()
            super().teardown()

        def seed(self, path: str, **data: Any) -> StepOutput:
            case = schema[path]["POST"].Case(**data)
            self.recorder.record_case(case=case)
            return self.step(StepInput.initial(case))

        @initialize(target=seeded)
        def create_and_run_a_schedule(self) -> MultipleResults[StepOutput]:
            created = self.seed(tasks, body=components["TaskCreate"]["examples"][0])
            task_id = {"task_id": created.response.json()["id"]}
            return multiple(created, self.seed(tasks + "/{task_id}/run", path_parameters=task_id))

        @initialize(target=seeded)
        def enqueue_an_execution(self) -> StepOutput:
            return self.seed(executions, body=components["ExecutionCreate"]["examples"][0])

        def step(self, input: StepInput) -> StepOutput:
            output = super().step(input)
            status, label = output.response.status_code, input.case.operation.label
            if label == f"POST {tasks}" and status == 201:
                self.created.append(output.response.json()["id"])
            if input.transition is not None and input.is_applied and 200 <= status < 300:
                parent = self.recorder.cases[input.transition.parent_id].value
                followed[(parent.operation.label, label)] += 1
            return output

    Scenario.run(
        settings=hypothesis_settings(
            max_examples=SCENARIOS,
            stateful_step_count=STEPS,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
    )
    assert set(followed) == links, f"never followed to a 2xx: {sorted(links - set(followed))}"
    every = {check.__name__ for check in REGISTERED_CHECKS.get_all() if not is_check_class(check)}
    assert every <= checked, f"checks that never ran: {sorted(every - checked)}"
