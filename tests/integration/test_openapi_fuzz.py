"""Fuzz every operation of the served OpenAPI document with schemathesis.

A real keyless ``overnight serve`` on loopback, on the fake models. For each
operation schemathesis generates requests from the document (bodies, headers, query
and path parameters) and checks each answer: never a 5xx, a documented status code
and content type, and a body that conforms to the documented schema. The run is
bounded: ``MAX_EXAMPLES`` per operation and ``BUDGET_S`` of wall-clock time in all.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from tests.helpers import request
from tests.serving import running_server

MAX_EXAMPLES = 40
BUDGET_S = 120.0
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(tmp_path_factory.mktemp("fuzz")) as base:
        yield base


def seed(base: str) -> dict[str, str]:
    """Real things for path parameters: a model, a finished batch, its generated file."""
    lines = b"".join(
        json.dumps({"key": f"k{i}", "request": request(f"text {i}")}).encode() + b"\n"
        for i in range(3)
    )
    started = httpx.post(
        f"{base}/upload/v1/files",
        json={"file": {"display_name": "in.jsonl"}},
        headers={"X-Goog-Upload-Command": "start", "X-Goog-Upload-Protocol": "resumable"},
    )
    final = httpx.post(
        started.headers["x-goog-upload-url"],
        content=lines,
        headers={"X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "0"},
    )
    batch = httpx.post(
        f"{base}/v1/models/echo:batchGenerateContent",
        json={"batch": {"inputConfig": {"fileName": final.json()["file"]["name"]}}},
    ).json()
    deadline = time.monotonic() + 30
    while not (op := httpx.get(f"{base}/v1/{batch['name']}").json()).get("done"):
        assert time.monotonic() < deadline, op
        time.sleep(0.05)
    output = op["metadata"]["output"]["responsesFile"]
    return {
        "model": "echo",
        "batch_id": batch["name"].removeprefix("batches/"),
        "file_id": output.removeprefix("files/"),
    }


def test_openapi_document_is_complete(server: str) -> None:
    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
    document = schema.raw_schema
    assert {"apiKeyHeader", "apiKeyQuery"} <= set(document["components"]["securitySchemes"])
    for path, item in document["paths"].items():
        for method, operation in item.items():
            where = f"{method.upper()} {path}"
            assert {"400", "401", "403", "404", "413", "500"} <= set(operation["responses"]), where
            if method == "post" and not path.endswith(":cancel"):
                assert "requestBody" in operation, where
    upload = document["paths"]["/upload/{version}/files"]["post"]
    headers = {p["name"] for p in upload["parameters"] if p["in"] == "header"}
    assert {
        "X-Goog-Upload-Protocol",
        "X-Goog-Upload-Command",
        "X-Goog-Upload-Offset",
        "X-Goog-Upload-Header-Content-Length",
        "X-Goog-Upload-Header-Content-Type",
    } <= headers


def fuzz(
    operation: schemathesis.APIOperation, base: str, seconds: float, known: dict[str, str]
) -> list[str]:
    """Up to ``MAX_EXAMPLES`` generated cases for one operation; their failures.

    Most cases name real things (``known``) in their path, so that generated bodies
    and parameters reach a model, a batch or a file instead of a 404; some are
    negative (they break the schema on purpose) and must still get a documented 4xx.
    """
    deadline = time.monotonic() + seconds
    failures: list[str] = []
    names = {p.name for p in operation.path_parameters}
    real = {name: value for name, value in known.items() if name in names}
    strategy = operation.as_strategy(path_parameters=real) | operation.as_strategy()
    strategy |= operation.as_strategy(GenerationMode.NEGATIVE)  # schema-invalid requests

    @given(case=strategy)
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        if time.monotonic() > deadline:
            return
        try:
            case.call_and_validate(base_url=base, checks=CHECKS, timeout=30)
        except (Exception, BaseExceptionGroup) as exc:  # record it, and go on
            failures.append(f"{operation.label}: {exc}\n  {case.as_curl_command()}")

    run()
    return failures


def test_fuzz_every_operation(server: str) -> None:
    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"an operation schemathesis cannot read: {result.err()}"
        operations.append(result.ok())
    known = seed(server)
    share = BUDGET_S / len(operations)  # each operation gets its part of the budget
    failures = [f for op in operations for f in fuzz(op, server, share, known)]
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:20])
