"""``domain.file_parts``: which URIs name a file, and the fileData → inlineData rewrite."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from overnight.domain.file_parts import file_id, has_file_parts, resolve_file_parts
from overnight.domain.requests import GenerateRequest
from overnight.errors import NotFound


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("files/abc", "abc"),
        ("https://host:8080/v1beta/files/abc", "abc"),
        ("http://127.0.0.1/v1/files/abc-1", "abc-1"),
        ("https://generativelanguage.googleapis.com/v1beta/files/x9", "x9"),
        ("gs://bucket/cat.png", None),
        ("https://example.com/cat.png", None),
        ("files/abc/extra", None),
    ],
)
def test_file_id(uri: str, expected: str | None) -> None:
    assert file_id(uri) == expected


def request(*uris: str, system: str | None = None) -> GenerateRequest:
    parts: list[dict[str, Any]] = [{"text": "look"}]
    parts += [{"fileData": {"fileUri": uri}} for uri in uris]
    body: dict[str, Any] = {"contents": [{"role": "user", "parts": parts}]}
    if system:
        body["systemInstruction"] = {"parts": [{"fileData": {"fileUri": system}}]}
    return GenerateRequest.model_validate(body)


def test_rewrite_reads_each_file_once_and_keeps_foreign_uris() -> None:
    reads: list[str] = []

    async def read(name: str) -> tuple[str, bytes]:
        reads.append(name)
        return "image/png", name.encode()

    req = request("files/a", "gs://b/c.png", "files/a", system="files/s")
    assert has_file_parts(req)
    out = asyncio.run(resolve_file_parts(req, read))
    parts = out.contents[0].parts
    assert parts[0].text == "look"
    assert parts[1].inline_data is not None and parts[1].inline_data.data == b"a"
    assert parts[1].inline_data.mime_type == "image/png" and parts[1].file_data is None
    assert parts[2].file_data is not None and parts[2].file_data.file_uri == "gs://b/c.png"
    assert parts[3].kind == "inlineData"
    assert out.system_instruction is not None
    assert out.system_instruction.parts[0].kind == "inlineData"
    assert reads == ["a", "s"]
    assert not has_file_parts(request("gs://b/c.png"))


def test_the_part_s_own_mime_type_wins() -> None:
    async def read(name: str) -> tuple[str, bytes]:
        return "application/octet-stream", b"x"

    req = GenerateRequest.model_validate(
        {"contents": [{"parts": [{"fileData": {"fileUri": "files/a", "mimeType": "image/jpeg"}}]}]}
    )
    out = asyncio.run(resolve_file_parts(req, read))
    blob = out.contents[0].parts[0].inline_data
    assert blob is not None and blob.mime_type == "image/jpeg"


def test_an_unreadable_file_is_named_by_its_part() -> None:
    async def read(name: str) -> tuple[str, bytes]:
        raise NotFound(f"file files/{name} not found")

    with pytest.raises(NotFound, match=r"^contents\[0\]\.parts\[1\]\.fileData: file files/a"):
        asyncio.run(resolve_file_parts(request("files/a"), read))
