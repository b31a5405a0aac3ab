"""The seed articles' Python samples, run with the real ``google-genai`` SDK.

Only the client line differs from the articles: it points ``base_url`` at an
``overnight serve`` subprocess. The articles' polling loop sleeps 30 s between polls;
``time.sleep`` is shortened for the test, the loop itself is unchanged. Every test runs
against the SDK's default API version (v1 in google-genai 3.x) and against v1beta.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from google import genai
from google.genai import errors, types
from tests.serving import running_server

completed = {
    "JOB_STATE_SUCCEEDED",
    "JOB_STATE_FAILED",
    "JOB_STATE_CANCELLED",
    "JOB_STATE_EXPIRED",
}

pytestmark = [
    pytest.mark.filterwarnings(r"ignore:batches.create_embeddings\(\) is experimental"),
    pytest.mark.usefixtures("quick_polls"),  # the articles poll every 30 s
]


def wait(client: genai.Client, job_name: str) -> types.BatchJob:
    """Seed 002 §5's polling loop, verbatim."""
    while True:
        job = client.batches.get(name=job_name)
        if job.state.name in completed:
            break
        print("waiting...", job.state.name)
        time.sleep(30)

    print("final:", job.state.name)
    return job


def test_inline_seed(client: genai.Client) -> None:
    # Seed 000 / seed 002 §3, verbatim apart from the client.
    inline_requests = [
        {"contents": [{"parts": [{"text": "Tell me a one-sentence joke."}], "role": "user"}]},
        {"contents": [{"parts": [{"text": "Why is the sky blue?"}], "role": "user"}]},
    ]
    inline_batch_job = client.batches.create(
        model="models/gemini-2.5-flash",
        src=inline_requests,
        config={
            "display_name": "inlined-requests-job-1",
        },
    )
    print(f"Created batch job: {inline_batch_job.name}")
    assert inline_batch_job.name.startswith("batches/")
    assert inline_batch_job.display_name == "inlined-requests-job-1"
    assert inline_batch_job.model == "models/gemini-2.5-flash"

    job = wait(client, inline_batch_job.name)
    assert job.state.name == "JOB_STATE_SUCCEEDED"
    assert job.done
    assert job.end_time is not None and job.create_time is not None
    texts = []
    for r in job.dest.inlined_responses:
        if r.response:
            print(r.response.text)
            texts.append(r.response.text)
    assert texts == ["echo: Tell me a one-sentence joke.", "echo: Why is the sky blue?"]


def test_inline_metadata_and_multimodal_error(client: genai.Client) -> None:
    png = bytes.fromhex("89504e470d0a1a0a0000000d49484452")
    job = client.batches.create(
        model="gemini-2.5-flash",
        src=[
            types.InlinedRequest(contents="plain text", metadata={"key": "req-0"}),
            types.InlinedRequest(
                contents=[
                    types.Content(
                        role="user",
                        parts=[
                            types.Part(text="What is in this image?"),
                            types.Part(inline_data=types.Blob(mime_type="image/png", data=png)),
                        ],
                    )
                ],
                metadata={"key": "req-1"},
            ),
        ],
    )
    job = wait(client, job.name)
    assert job.state.name == "JOB_STATE_SUCCEEDED"
    first, second = job.dest.inlined_responses
    assert first.response.text == "echo: plain text"
    assert first.metadata == {"key": "req-0"}
    assert second.response is None
    assert second.error is not None and second.error.code == 400
    assert "image" in second.error.message or "inlineData" in second.error.message
    # an inline batch has no lines: the error names the item as it was sent
    assert second.error.message.startswith("inlinedRequests[1]: ")
    assert second.metadata == {"key": "req-1"}


def test_file_seed(client: genai.Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    # Seed 002 §4.2 and §4.3, verbatim apart from the client.
    with open("my-batch-requests.jsonl", "w") as f:
        requests = [
            {
                "key": "request-1",
                "request": {"contents": [{"parts": [{"text": "Describe photosynthesis."}]}]},
            },
            {
                "key": "request-2",
                "request": {
                    "contents": [{"parts": [{"text": "Ingredients of Margherita pizza?"}]}]
                },
            },
        ]
        for r in requests:
            f.write(json.dumps(r) + "\n")

    uploaded = client.files.upload(
        file="my-batch-requests.jsonl",
        config=types.UploadFileConfig(display_name="my-batch-requests", mime_type="jsonl"),
    )

    print(uploaded.name)

    job = client.batches.create(
        model="models/gemini-2.5-flash",
        src={"file_name": uploaded.name},
        config={"display_name": "file-batch-job-1"},
    )

    print(job.name)  # 例: batches/123456789

    job = wait(client, job.name)
    assert job.state.name == "JOB_STATE_SUCCEEDED"
    assert job.dest.file_name.startswith("files/batch")
    content = client.files.download(file=job.dest.file_name)
    lines = {line["key"]: line for line in map(json.loads, content.decode().splitlines())}
    assert set(lines) == {"request-1", "request-2"}
    text = lines["request-1"]["response"]["candidates"][0]["content"]["parts"][0]["text"]
    assert text == "echo: Describe photosynthesis."
    result = client.files.get(name=job.dest.file_name)
    assert result.source.name == "GENERATED" and result.download_uri


def test_sdk_readme_batch_examples(
    client: genai.Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The SDK README's "Batch Prediction" examples for the Gemini Developer API, verbatim
    # apart from the client and the file name (the README's "files/test-json" is its
    # display name, not its name).
    batch_job = client.batches.create(
        model="gemini-3.8-flash",
        src=[
            {
                "contents": [
                    {
                        "parts": [
                            {
                                "text": "Hello!",
                            }
                        ],
                        "role": "user",
                    }
                ],
                "config": {"response_modalities": ["text"]},
            }
        ],
    )
    job = wait(client, batch_job.name)
    assert job.state.name == "JOB_STATE_SUCCEEDED"
    (answer,) = job.dest.inlined_responses
    assert answer.error is None and answer.response.text == "echo: Hello!"
    inline_name = job.name

    monkeypatch.chdir(tmp_path)
    with open("myrequests.json", "w") as f:
        f.write(
            '{"key":"request_1", "request": {"contents": [{"parts": [{"text":'
            ' "Explain how AI works in a few words"}]}], "generation_config":'
            ' {"response_modalities": ["TEXT"]}}}\n'
            '{"key":"request_2", "request": {"contents": [{"parts": [{"text":'
            ' "Explain how Crypto works in a few words"}]}]}}\n'
        )
    file = client.files.upload(
        file="myrequests.json", config=types.UploadFileConfig(display_name="test-json")
    )
    batch_job = client.batches.create(model="gemini-3.8-flash", src=file.name)
    job = wait(client, batch_job.name)
    assert job.state.name == "JOB_STATE_SUCCEEDED"
    content = client.files.download(file=job.dest.file_name)
    lines = {line["key"]: line for line in map(json.loads, content.decode().splitlines())}
    assert set(lines) == {"request_1", "request_2"}
    assert all("response" in line for line in lines.values()), lines

    # The README's list examples. A listed inline batch carries no results (like
    # Gemini's list: get the batch to read them); a file batch keeps its responses file.
    listed = {job.name: job for job in client.batches.list(config={"page_size": 10})}
    assert listed[inline_name].state.name == "JOB_STATE_SUCCEEDED"
    assert listed[inline_name].dest is None
    assert listed[batch_job.name].dest.file_name == job.dest.file_name
    pager = client.batches.list(config=types.ListBatchJobsConfig(page_size=10))
    assert pager.page_size == 10
    assert {j.name for j in pager.page} >= {inline_name, batch_job.name}


def test_listed_batches_carry_no_inline_results(client: genai.Client) -> None:
    job = client.batches.create(
        model="gemini-2.5-flash", src=[{"contents": "first"}, {"contents": "second"}]
    )
    done = wait(client, job.name)
    assert [r.response.text for r in done.dest.inlined_responses] == [
        "echo: first",
        "echo: second",
    ]
    listed = next(j for j in client.batches.list(config={"page_size": 5}) if j.name == job.name)
    assert listed.state.name == "JOB_STATE_SUCCEEDED" and listed.done
    assert listed.model == "models/gemini-2.5-flash" and listed.end_time is not None
    assert listed.dest is None
    assert client.batches.get(name=job.name).dest.inlined_responses


def test_cancelling_an_ended_batch_is_refused(client: genai.Client) -> None:
    job = client.batches.create(model="gemini-2.5-flash", src=[{"contents": "x"}])
    job = wait(client, job.name)
    with pytest.raises(errors.ClientError) as caught:
        client.batches.cancel(name=job.name)
    assert caught.value.code == 400 and caught.value.status == "FAILED_PRECONDITION"
    assert "BATCH_STATE_SUCCEEDED" in caught.value.message


@pytest.mark.parametrize(
    "model", ["gemini-2.5-flash-image", "gemini-2.0-flash-preview-image-generation"]
)
def test_image_models_are_refused_at_create(client: genai.Client, model: str) -> None:
    before = [j.name for j in client.batches.list(config={"page_size": 100})]
    with pytest.raises(errors.ClientError) as caught:
        client.batches.create(
            model=model,
            src=[{"contents": "a cat", "config": {"response_modalities": ["TEXT", "IMAGE"]}}],
        )
    assert caught.value.code == 404 and caught.value.status == "NOT_FOUND"
    assert f"model '{model}' generates images" in caught.value.message
    assert [j.name for j in client.batches.list(config={"page_size": 100})] == before


def test_cancel(client: genai.Client) -> None:
    job = client.batches.create(
        model="slow-echo",
        src=[{"contents": [{"parts": [{"text": f"question {i}"}]}]} for i in range(60)],
    )
    job_name = job.name
    # Seed 002 §7, verbatim.
    client.batches.cancel(name=job_name)
    job = wait(client, job_name)
    assert job.state.name == "JOB_STATE_CANCELLED"
    client.batches.delete(name=job_name)
    with pytest.raises(errors.ClientError) as caught:
        client.batches.get(name=job_name)
    assert caught.value.code == 404


def test_embeddings(client: genai.Client, tmp_path: Path) -> None:
    job = client.batches.create_embeddings(
        model="gemini-embedding-001",
        src={
            "inlined_requests": {
                "contents": ["first text", "second text", "third"],
                "config": {"output_dimensionality": 4},
            }
        },
        config={"display_name": "Inlined embeddings batch"},
    )
    job = wait(client, job.name)
    assert job.state.name == "JOB_STATE_SUCCEEDED"
    vectors = [r.response.embedding.values for r in job.dest.inlined_embed_content_responses]
    assert [len(v) for v in vectors] == [4, 4, 4]

    path = tmp_path / "embed.jsonl"
    path.write_text(
        "".join(
            json.dumps({"key": f"e{i}", "request": {"content": {"parts": [{"text": t}]}}}) + "\n"
            for i, t in enumerate(["alpha beta", "gamma"])
        )
    )
    uploaded = client.files.upload(file=str(path), config={"mime_type": "jsonl"})
    job = client.batches.create_embeddings(
        model="gemini-embedding-001", src={"file_name": uploaded.name}
    )
    job = wait(client, job.name)
    assert job.state.name == "JOB_STATE_SUCCEEDED"
    content = client.files.download(file=job.dest.file_name)
    lines = {line["key"]: line for line in map(json.loads, content.decode().splitlines())}
    assert set(lines) == {"e0", "e1"}
    assert lines["e0"]["response"]["embedding"]["values"]


def test_list_pages(client: genai.Client) -> None:
    names = {
        client.batches.create(model="gemini-2.5-flash", src=[{"contents": f"q{i}"}]).name
        for i in range(3)
    }
    pager = client.batches.list(config={"page_size": 2})
    assert len(pager.page) == 2
    listed = [job.name for job in pager]
    assert names <= set(listed)
    assert len(listed) == len(set(listed))


def test_unknown_model_and_batch(client: genai.Client) -> None:
    with pytest.raises(errors.ClientError) as caught:
        client.batches.create(model="no-such-model", src=[{"contents": "x"}])
    assert caught.value.code == 404 and caught.value.status == "NOT_FOUND"
    with pytest.raises(errors.ClientError) as caught:
        client.batches.get(name="batches/doesnotexist")
    assert caught.value.code == 404


@pytest.mark.model
def test_inline_seed_on_the_bundled_model(tmp_path: Path, model_cache_dir: Path) -> None:
    env = {"OVERNIGHT_MODEL_CACHE_DIR": str(model_cache_dir)}
    # The seed sets no maxOutputTokens; a smaller default keeps the test to seconds.
    config = '[models.smollm2-135m-instruct]\nbackend = "transformers"\nmax_output_tokens = 40\n'
    with running_server(tmp_path, config=config, env=env) as base:
        client = genai.Client(api_key="x", http_options={"base_url": base})
        inline_requests = [
            {"contents": [{"parts": [{"text": "Tell me a one-sentence joke."}], "role": "user"}]},
            {"contents": [{"parts": [{"text": "Why is the sky blue?"}], "role": "user"}]},
        ]
        inline_batch_job = client.batches.create(
            model="models/gemini-2.5-flash",
            src=inline_requests,
            config={
                "display_name": "inlined-requests-job-1",
            },
        )
        job = wait(client, inline_batch_job.name)
        assert job.state.name == "JOB_STATE_SUCCEEDED"
        for r in job.dest.inlined_responses:
            assert r.response, r.error
            assert r.response.text.strip()


@pytest.mark.model
def test_sdk_readme_batch_examples_on_the_bundled_model(
    tmp_path: Path, model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The SDK README's batch examples set response_modalities=["text"] / ["TEXT"]:
    # SmolLM2 answers text, so they run end to end with every request answered.
    env = {"OVERNIGHT_MODEL_CACHE_DIR": str(model_cache_dir)}
    config = '[models.smollm2-135m-instruct]\nbackend = "transformers"\nmax_output_tokens = 24\n'
    with running_server(tmp_path / "serve", config=config, env=env, timeout=120) as base:
        client = genai.Client(api_key="x", http_options={"base_url": base})
        batch_job = client.batches.create(
            model="gemini-3.8-flash",
            src=[
                {
                    "contents": [{"parts": [{"text": "Hello!"}], "role": "user"}],
                    "config": {"response_modalities": ["text"]},
                }
            ],
        )
        job = wait(client, batch_job.name)
        assert job.state.name == "JOB_STATE_SUCCEEDED"
        (answer,) = job.dest.inlined_responses
        assert answer.error is None, answer.error
        assert answer.response.text.strip()

        monkeypatch.chdir(tmp_path)
        with open("myrequests.json", "w") as f:
            f.write(
                '{"key":"request_1", "request": {"contents": [{"parts": [{"text":'
                ' "Explain how AI works in a few words"}]}], "generation_config":'
                ' {"response_modalities": ["TEXT"]}}}\n'
                '{"key":"request_2", "request": {"contents": [{"parts": [{"text":'
                ' "Explain how Crypto works in a few words"}]}]}}\n'
            )
        file = client.files.upload(
            file="myrequests.json", config=types.UploadFileConfig(display_name="test-json")
        )
        batch_job = client.batches.create(model="gemini-3.8-flash", src=file.name)
        job = wait(client, batch_job.name)
        assert job.state.name == "JOB_STATE_SUCCEEDED"
        content = client.files.download(file=job.dest.file_name)
        lines = [json.loads(line) for line in content.decode().splitlines()]
        assert [line["key"] for line in lines] == ["request_1", "request_2"]
        for line in lines:
            assert "response" in line, line
            assert line["response"]["modelVersion"] == "SmolLM2-135M-Instruct"
