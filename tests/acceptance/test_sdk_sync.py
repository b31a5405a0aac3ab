"""The unmodified google-genai SDK's synchronous calls against a real ``overnight serve``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from google import genai
from google.genai import errors, types
from tests.serving import FAKE_MODELS, running_server

ALIASED = FAKE_MODELS + '[aliases]\n"gemini-*" = "echo"\n'


def client_for(base: str, version: str | None = None) -> genai.Client:
    options: dict[str, str] = {"base_url": base}
    if version:
        options["api_version"] = version
    return genai.Client(api_key="x", http_options=options)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(tmp_path_factory.mktemp("sdk-sync"), config=ALIASED) as base:
        yield base


@pytest.fixture(autouse=True)
def _no_vertex(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOOGLE_GENAI_USE_VERTEXAI", raising=False)
    monkeypatch.delenv("GOOGLE_GENAI_USE_ENTERPRISE", raising=False)


@pytest.mark.parametrize("version", [None, "v1beta"])
def test_generate_content(server: str, version: str | None) -> None:
    client = client_for(server, version)
    response = client.models.generate_content(
        model="gemini-2.5-flash",
        contents="Why is the sky blue?",
        config=types.GenerateContentConfig(max_output_tokens=64, temperature=0.5, seed=3),
    )
    assert response.text is not None and response.text.startswith("echo: Why is the sky blue?")
    assert response.model_version == "echo"
    assert response.usage_metadata is not None
    assert response.usage_metadata.prompt_token_count == 5


def test_generate_content_stream(server: str) -> None:
    client = client_for(server)
    chunks = list(client.models.generate_content_stream(model="echo", contents="stream me"))
    assert "".join(c.text or "" for c in chunks) == "echo: stream me"


def test_embed_content(server: str) -> None:
    client = client_for(server)
    result = client.models.embed_content(
        model="echo",
        contents=["first text", "second text here"],
        config=types.EmbedContentConfig(output_dimensionality=4, task_type="RETRIEVAL_DOCUMENT"),
    )
    assert result.embeddings is not None and len(result.embeddings) == 2
    assert all(len(e.values or []) == 4 for e in result.embeddings)


def test_count_tokens(server: str) -> None:
    client = client_for(server)
    counted = client.models.count_tokens(model="gemini-2.5-flash", contents="one two three four")
    assert counted.total_tokens == 4


def test_models_list_and_get(server: str) -> None:
    client = client_for(server)
    models = {m.name: m for m in client.models.list()}
    assert "models/echo" in models and "models/slow-echo" in models
    assert "batchGenerateContent" in (models["models/echo"].supported_actions or [])
    got = client.models.get(model="gemini-2.5-flash")
    assert got.name == "models/gemini-2.5-flash"
    assert got.version == "echo"
    assert "echo" in (got.description or "")


def test_models_get_reports_the_generation_defaults(server: str) -> None:
    client = client_for(server)
    smol = client.models.get(model="smollm2-135m-instruct")  # reported without loading it
    assert smol.temperature == 0.2 and smol.top_p == 0.95 and smol.top_k == 40
    assert smol.max_temperature == 2.0
    assert smol.input_token_limit == 4096 and smol.output_token_limit == 512
    echo = client.models.get(model="gemini-2.5-flash")  # the fake: no defaults claimed
    assert echo.temperature is None and echo.top_k is None


def test_errors_are_client_errors(server: str) -> None:
    client = client_for(server)
    with pytest.raises(errors.ClientError) as caught:
        client.models.generate_content(model="no-such-model", contents="x")
    assert caught.value.code == 404
    assert caught.value.status == "NOT_FOUND"
    with pytest.raises(errors.ClientError) as bad:
        client.models.generate_content(
            model="echo", contents="x", config=types.GenerateContentConfig(presence_penalty=0.5)
        )
    assert bad.value.code == 400 and "presencePenalty" in (bad.value.message or "")


def test_text_response_modality_and_media_models(server: str) -> None:
    client = client_for(server)
    response = client.models.generate_content(
        model="gemini-2.5-flash",
        contents="Hello!",
        config=types.GenerateContentConfig(response_modalities=["TEXT"]),
    )
    assert response.text == "echo: Hello!"
    with pytest.raises(errors.ClientError) as bad:
        client.models.generate_content(
            model="gemini-2.5-flash",
            contents="Draw a cat",
            config=types.GenerateContentConfig(response_modalities=["TEXT", "IMAGE"]),
        )
    assert bad.value.code == 400 and "responseModalities[1]" in (bad.value.message or "")
    for model in ("gemini-2.5-flash-image", "gemini-2.5-flash-preview-tts"):
        with pytest.raises(errors.ClientError) as refused:
            client.models.generate_content(model=model, contents="a cat")
        assert refused.value.code == 404 and refused.value.status == "NOT_FOUND"
        assert f"model '{model}' generates" in (refused.value.message or "")


@pytest.mark.model
def test_real_bundled_models(tmp_path: Path, model_cache_dir: Path) -> None:
    env = {"OVERNIGHT_MODEL_CACHE_DIR": str(model_cache_dir)}
    with running_server(tmp_path, config="", env=env, timeout=120) as base:
        client = client_for(base)
        response = client.models.generate_content(
            model="gemini-2.5-flash",
            contents="What is the capital of France? Answer in one word.",
            config=types.GenerateContentConfig(max_output_tokens=16),
        )
        assert response.text and response.text.strip()
        assert response.model_version == "SmolLM2-135M-Instruct"
        counted = client.models.count_tokens(model="gemini-2.5-flash", contents="Hello there")
        assert counted.total_tokens and counted.total_tokens > 2  # chat template included
        embedded = client.models.embed_content(
            model="gemini-embedding-001", contents=["a cat", "a dog"]
        )
        assert embedded.embeddings is not None
        assert [len(e.values or []) for e in embedded.embeddings] == [384, 384]
        words = client.models.count_tokens(model="gemini-embedding-001", contents="a cat")
        assert words.total_tokens == 2  # the tokenizer's count, without special tokens
    assert os.listdir(model_cache_dir)  # the converted weights were cached
