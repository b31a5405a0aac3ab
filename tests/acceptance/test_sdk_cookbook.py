"""The official Gemini cookbook's Batch mode notebook, its cells as a script.

google-gemini/cookbook ``quickstarts/Batch_mode.ipynb``: each test below is one of its
cells (or a run of them), with only the client line changed and the 30 s polling sleep
shortened. The notebook's own files are written as it writes them, snake_case request
fields included (``generation_config``, ``file_data``, ``output_dimensionality``). Its
image-generation cell must fail at create with a clear error, since no model here
makes images; the image-understanding line fails on its own, as a text model's line.
Runs against the SDK's default API version and against v1beta.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
from google import genai
from google.genai import errors, types

MODEL_ID = "gemini-3.6-flash"  # the notebook's default choice
ENDED = ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED")
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)

pytestmark = [
    pytest.mark.filterwarnings(r"ignore:batches.create_embeddings\(\) is experimental"),
    pytest.mark.usefixtures("quick_polls"),  # the notebook polls every 30 s
]


def poll(client: genai.Client, job_name: str) -> types.BatchJob:
    """The notebook's polling loop."""
    while True:
        batch_job = client.batches.get(name=job_name)
        if batch_job.state.name in ENDED:
            break
        time.sleep(30)
    return batch_job


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return str(path)


def test_file_batch_then_results(client: genai.Client, tmp_path: Path) -> None:
    requests_data = [
        {"key": "request_1", "request": {"contents": [{"parts": [{"text": "Explain how AI works in a few words"}]}]}},
        {"key": "request_2", "request": {"contents": [{"parts": [{"text": "Explain how quantum computing works in a few words"}]}]}},
    ]  # fmt: skip
    path = write_jsonl(tmp_path / "batch_requests.json", requests_data)
    uploaded = client.files.upload(
        file=path, config=types.UploadFileConfig(display_name="batch-input-file")
    )
    job = client.batches.create(
        model=MODEL_ID, src=uploaded.name, config={"display_name": "my-batch-job-from-file"}
    )
    batch_job = poll(client, job.name)
    assert batch_job.state.name == "JOB_STATE_SUCCEEDED"
    content = client.files.download(file=batch_job.dest.file_name).decode("utf-8")
    parsed = [json.loads(line) for line in content.splitlines() if line]
    assert [p["key"] for p in parsed] == ["request_1", "request_2"]
    assert all(p["response"]["candidates"][0]["content"]["parts"][0]["text"] for p in parsed)


def test_webhook_cell(client: genai.Client) -> None:
    webhook = client.webhooks.create(
        name="MyBatchWebhook",
        subscribed_events=["batch.succeeded", "batch.failed"],
        uri="https://my-api.com/gemini-callback",
    )
    assert webhook.id and webhook.subscribed_events == ["batch.succeeded", "batch.failed"]
    client.webhooks.delete(id=webhook.id)


def test_inline_batch_then_list(client: genai.Client) -> None:
    inline_requests_list = [
        {"contents": [{"parts": [{"text": "Write a short poem about a cloud."}]}]},
        {"contents": [{"parts": [{"text": "Write a short poem about a cat."}]}]},
    ]
    job = client.batches.create(
        model=MODEL_ID,
        src=inline_requests_list,
        config={"display_name": "my-batch-job-inline-example"},
    )
    batch_job_inline = poll(client, job.name)
    assert batch_job_inline.state.name == "JOB_STATE_SUCCEEDED"
    texts = [r.response.text for r in batch_job_inline.dest.inlined_responses]
    assert len(texts) == 2 and all(texts)

    # The list cell: no inline results in a listed batch; a get carries them.
    seen = False
    for b in client.batches.list(config={"page_size": 10}).page:
        assert b.create_time is not None and b.state is not None
        if b.name == job.name:
            seen = True
            assert b.dest is None or not b.dest.inlined_responses
            full_job = client.batches.get(name=b.name)
            assert len(full_job.dest.inlined_responses) == 2
    assert seen


def test_embeddings_file_batch_with_snake_case_lines(client: genai.Client, tmp_path: Path) -> None:
    path = tmp_path / "embeddings_batch_requests.jsonl"
    path.write_text(
        '{"key": "request_1", "request": {"output_dimensionality": 3, "content": {"parts": [{"text": "1"}]}}}\n'
        '{"key": "request_2", "request": {"output_dimensionality": 4, "content": {"parts": [{"text": "2"}]}}}\n'
    )
    uploaded = client.files.upload(file=str(path), config=types.UploadFileConfig(mime_type="jsonl"))
    job = client.batches.create_embeddings(
        model="gemini-embedding-001",
        src=types.EmbeddingsBatchJobSource(file_name=uploaded.name),
    )
    batch_job = poll(client, job.name)
    assert batch_job.state.name == "JOB_STATE_SUCCEEDED"
    lines = client.files.download(file=batch_job.dest.file_name).decode("utf-8").splitlines()
    sizes = [len(json.loads(line)["response"]["embedding"]["values"]) for line in lines]
    assert sizes == [3, 4]


def test_image_file_data_line_fails_alone_on_a_text_model(
    client: genai.Client, tmp_path: Path
) -> None:
    image_path = tmp_path / "jetpack.png"
    image_path.write_bytes(PNG)
    image_file = client.files.upload(file=str(image_path))
    assert image_file.mime_type == "image/png"
    requests_data = [
        {"key": "request_1", "request": {"contents": [{"parts": [{"text": "Explain how AI works in a few words"}]}]}},
        {
            "key": "request_2_image",
            "request": {
                "contents": [{
                    "parts": [
                        {"text": "What is in this image? Describe it in detail."},
                        {"file_data": {"file_uri": image_file.uri, "mime_type": image_file.mime_type}},
                    ]
                }]
            },
        },
    ]  # fmt: skip
    batch_input_file = client.files.upload(
        file=write_jsonl(tmp_path / "batch_requests_with_image.json", requests_data)
    )
    job = client.batches.create(
        model=MODEL_ID,
        src=batch_input_file.name,
        config={"display_name": "my-batch-job-with-image"},
    )
    batch_job = poll(client, job.name)
    assert batch_job.state.name == "JOB_STATE_SUCCEEDED"
    lines = client.files.download(file=batch_job.dest.file_name).decode("utf-8").splitlines()
    by_key = {line["key"]: line for line in map(json.loads, lines)}
    assert "response" in by_key["request_1"]
    error = by_key["request_2_image"]["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    assert "contents[0].parts[1].fileData" in error["message"]
    assert "text parts only" in error["message"]


def test_image_generation_cell_is_refused_at_create(client: genai.Client, tmp_path: Path) -> None:
    requests_data = [
        {"key": "image_request_1", "request": {"contents": [{"parts": [{"text": "A big letter A surrounded by animals starting with the A letter"}]}], "generation_config": {"response_modalities": ["TEXT", "IMAGE"]}}},
    ]  # fmt: skip
    batch_input_file = client.files.upload(
        file=write_jsonl(tmp_path / "batch_image_gen_requests.json", requests_data)
    )
    with pytest.raises(errors.ClientError) as caught:
        client.batches.create(
            model="gemini-2.5-flash-image",
            src=batch_input_file.name,
            config={"display_name": "my-batch-image-gen-job"},
        )
    assert caught.value.code == 404
    assert "generates images" in str(caught.value)
    assert '[models."gemini-2.5-flash-image"]' in str(caught.value)
