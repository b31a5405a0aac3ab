"""``fileData`` parts naming an uploaded file, resolved to its bytes: through the
``openai`` and ``gemini`` backends against the fake upstream (data URL, inlineData),
a missing or another tenant's file as that line's own error, a text-only model's
clear error, and the synchronous call."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import run
from tests.helpers import drive, output_lines, write_jsonl

from overnight.app import Runtime, build_runtime
from overnight.config import load_settings
from overnight.domain.batches import BatchKind
from overnight.domain.file_parts import FILE_PART_MAX_BYTES
from overnight.domain.requests import GenerateRequest
from overnight.errors import InvalidArgument, NotFound
from overnight.testing.upstream import FakeUpstream

PNG = b"\x89PNG\r\n\x1a\nfake image bytes"


@pytest.fixture
def upstream(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeUpstream]:
    monkeypatch.setenv("FP_KEY", "k")
    with FakeUpstream(seed=5) as up:
        yield up


async def runtime(tmp_path: Path, upstream: FakeUpstream) -> Runtime:
    settings = load_settings(
        environ={},
        overrides={
            "data_dir": str(tmp_path / "data"),
            "engine": {"heartbeat_seconds": 0.2, "poll_seconds": 0.02},
            "models": {
                "up": {"backend": "openai", "base_url": f"{upstream.url}/v1"},
                "gup": {"backend": "gemini", "base_url": upstream.url, "api_key_env": "FP_KEY"},
                "echo": {"backend": "fake"},
            },
        },
    )
    return await build_runtime(settings)


def body(uri: str) -> dict[str, Any]:
    parts = [{"text": "what is this"}, {"fileData": {"mimeType": "image/png", "fileUri": uri}}]
    return {"contents": [{"role": "user", "parts": parts}]}


async def upload(rt: Runtime, tmp_path: Path, tenant: str = "t", data: bytes = PNG) -> str:
    path = tmp_path / f"{tenant}-{len(data)}.png"
    path.write_bytes(data)
    return (await rt.services.files.import_path(tenant, path)).id


async def batch_lines(
    rt: Runtime, tmp_path: Path, model: str, lines: list[tuple[str, str]]
) -> dict[str, Any]:
    requests = [{"key": key, "request": body(uri)} for key, uri in lines]
    path = write_jsonl(tmp_path / f"{model}.jsonl", requests)
    file = await rt.services.files.import_path("t", path)
    batch = await rt.services.batches.create_from_file(
        "t", model=model, kind=BatchKind.GENERATE, file_id=file.id
    )
    done = await drive(rt, batch.id)
    return {out["key"]: out for out in await output_lines(rt, done)}


def test_openai_gets_a_data_url_and_a_missing_file_fails_only_its_line(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    async def go() -> None:
        rt = await runtime(tmp_path, upstream)
        try:
            mine = await upload(rt, tmp_path)
            theirs = await upload(rt, tmp_path, tenant="other")
            out = await batch_lines(
                rt,
                tmp_path,
                "up",
                [
                    ("short", f"files/{mine}"),
                    ("uri", f"http://localhost:8080/v1beta/files/{mine}"),
                    ("missing", "files/nosuchfile"),
                    ("theirs", f"files/{theirs}"),
                ],
            )
        finally:
            await rt.close()
        assert "response" in out["short"] and "response" in out["uri"]
        for key in ("missing", "theirs"):
            assert out[key]["error"]["status"] == "NOT_FOUND", out[key]
            assert "contents[0].parts[1].fileData" in out[key]["error"]["message"]
        url = "data:image/png;base64," + base64.b64encode(PNG).decode()
        sent = [r.body for r in upstream.requests() if r.path.endswith("/chat/completions")]
        assert len(sent) == 2
        for request in sent:
            content = request["messages"][-1]["content"]
            assert {"type": "image_url", "image_url": {"url": url}} in content

    run(go())


def test_gemini_gets_inline_data(tmp_path: Path, upstream: FakeUpstream) -> None:
    async def go() -> None:
        rt = await runtime(tmp_path, upstream)
        try:
            mine = await upload(rt, tmp_path)
            out = await batch_lines(rt, tmp_path, "gup", [("a", f"files/{mine}")])
        finally:
            await rt.close()
        assert "response" in out["a"], out
        (sent,) = [r.body for r in upstream.requests() if ":generateContent" in r.path]
        parts = sent["contents"][0]["parts"]
        assert parts[1] == {
            "inlineData": {"mimeType": "image/png", "data": base64.b64encode(PNG).decode()}
        }
        assert "fileData" not in str(sent)

    run(go())


def test_text_only_model_keeps_its_error_without_reading_the_file(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    async def go() -> None:
        rt = await runtime(tmp_path, upstream)
        try:
            out = await batch_lines(rt, tmp_path, "echo", [("a", "files/nosuchfile")])
        finally:
            await rt.close()
        error = out["a"]["error"]
        assert error["status"] == "INVALID_ARGUMENT"
        assert "accepts text parts only" in error["message"]

    run(go())


def test_synchronous_generate_resolves_files_per_tenant(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    async def go() -> None:
        rt = await runtime(tmp_path, upstream)
        try:
            mine = await upload(rt, tmp_path)
            big = await upload(rt, tmp_path, data=b"x" * (FILE_PART_MAX_BYTES + 1))
            gen = rt.services.generation
            result = await gen.generate(
                "up", GenerateRequest.model_validate(body(f"files/{mine}")), tenant="t"
            )
            assert result.candidates
            with pytest.raises(NotFound, match="fileData"):
                request = GenerateRequest.model_validate(body(f"files/{mine}"))
                await gen.generate("up", request, tenant="other")
            with pytest.raises(InvalidArgument, match="limit"):
                request = GenerateRequest.model_validate(body(f"files/{big}"))
                await gen.generate("up", request, tenant="t")
        finally:
            await rt.close()

    run(go())
