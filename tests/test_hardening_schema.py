"""The served OpenAPI schema tells the truth: its examples are accepted, its bounds are
JSON Schema keywords, and a 405 names every method of the path."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from agentsched.settings import Settings
from tests.test_api_support import build_app, serve


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(build_app("create_app", settings)) as c:
        yield c


async def _schemas(client: httpx.AsyncClient) -> dict[str, dict]:
    response = await client.get("http://test/openapi.json")
    assert response.status_code == 200
    return response.json()["components"]["schemas"]


async def test_the_server_accepts_its_own_request_examples(client: httpx.AsyncClient) -> None:
    schemas = await _schemas(client)
    for model, path, status in (("ExecutionCreate", "/executions", 202),
                                ("TaskCreate", "/tasks", 201)):  # fmt: skip
        examples = schemas[model]["examples"]
        assert examples, model
        for example in examples:
            response = await client.post(path, json=example)
            assert response.status_code == status, (model, example, response.text)


async def test_patch_declares_its_bounds_as_json_schema(client: httpx.AsyncClient) -> None:
    prop = (await _schemas(client))["TaskUpdate"]["properties"]["max_catchup"]
    assert (prop["minimum"], prop["maximum"]) == (1, 1000) and "ge" not in prop


@pytest.mark.parametrize("method", ["OPTIONS", "PUT", "TRACE"])
async def test_405_names_every_method_of_the_path(client: httpx.AsyncClient, method: str) -> None:
    response = await client.request(method, f"/tasks/{uuid.uuid4()}")
    assert response.status_code == 405
    allowed = {m.strip() for m in response.headers["allow"].split(",")}
    assert {"GET", "PATCH", "DELETE"} <= allowed and method not in allowed
