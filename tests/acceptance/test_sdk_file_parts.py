"""An image uploaded through the unmodified ``google-genai`` SDK and referenced with
``types.Part.from_uri``: a synchronous call and an inline batch on an ``openai`` model
of a real ``overnight serve`` reach the (fake) upstream as a data URL."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from google import genai
from google.genai import types
from tests.serving import running_server

from overnight.testing.upstream import FakeUpstream

PNG = b"\x89PNG\r\n\x1a\nan image, as far as anyone here can tell"
DATA_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(seed=9) as up:
        yield up


@pytest.fixture(scope="module")
def client(
    tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream
) -> Iterator[genai.Client]:
    config = f'[models.vision]\nbackend = "openai"\nbase_url = "{upstream.url}/v1"\n'
    with running_server(tmp_path_factory.mktemp("sdk-file-parts"), config=config) as base:
        options = types.HttpOptions(base_url=base)
        yield genai.Client(api_key="x", http_options=options)


def image_part(client: genai.Client, tmp_path: Path) -> types.Part:
    path = tmp_path / "cat.png"
    path.write_bytes(PNG)
    file = client.files.upload(file=path, config=types.UploadFileConfig(mime_type="image/png"))
    assert file.uri and file.mime_type == "image/png"
    return types.Part.from_uri(file_uri=file.uri, mime_type="image/png")


def sent_images(upstream: FakeUpstream) -> list[str]:
    return [
        item["image_url"]["url"]
        for r in upstream.requests()
        if r.path.endswith("/chat/completions")
        for item in r.body["messages"][-1]["content"]
        if isinstance(item, dict) and item.get("type") == "image_url"
    ]


def test_generate_content_sends_the_uploaded_image(
    client: genai.Client, upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.reset_stats()
    part = image_part(client, tmp_path)
    contents = types.Content(role="user", parts=[types.Part(text="What is this?"), part])
    response = client.models.generate_content(model="vision", contents=contents)
    assert response.text
    assert sent_images(upstream) == [DATA_URL]


def test_an_inline_batch_sends_the_uploaded_image(
    client: genai.Client, upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.reset_stats()
    part = image_part(client, tmp_path)
    missing = types.Part.from_uri(file_uri="files/nosuchfile", mime_type="image/png")
    requests = [
        types.InlinedRequest(
            contents=[types.Content(role="user", parts=[types.Part(text="hi"), p])]
        )
        for p in (part, missing)
    ]
    job = client.batches.create(model="vision", src=requests)
    deadline = time.monotonic() + 60
    while job.state is not None and job.state.name not in (
        "JOB_STATE_SUCCEEDED",
        "JOB_STATE_FAILED",
    ):
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
        job = client.batches.get(name=job.name or "")
    assert job.state is not None and job.state.name == "JOB_STATE_SUCCEEDED"
    assert job.dest is not None and job.dest.inlined_responses
    found, lost = job.dest.inlined_responses
    assert found.response is not None and found.response.text
    assert lost.error is not None and "files/nosuchfile" in str(lost.error)
    assert sent_images(upstream) == [DATA_URL]
