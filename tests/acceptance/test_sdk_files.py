"""The unmodified ``google-genai`` SDK's Files API against a real ``overnight serve``."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from google import genai
from google.genai import errors, types
from tests.serving import running_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(tmp_path_factory.mktemp("serve")) as base:
        yield base


@pytest.fixture(params=[None, "v1beta"], ids=["default-version", "v1beta"])
def client(
    request: pytest.FixtureRequest, server: str, monkeypatch: pytest.MonkeyPatch
) -> genai.Client:
    for var in ("GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GENAI_USE_ENTERPRISE", "GOOGLE_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("GOOGLE_GENAI_API_VERSION", raising=False)
    options = types.HttpOptions(base_url=server, api_version=request.param)
    return genai.Client(api_key="any-key", http_options=options)


def jsonl(path: Path, size: int) -> Path:
    line = b'{"key": "k", "request": {"contents": [{"parts": [{"text": "hi"}]}]}}\n'
    path.write_bytes((line * (size // len(line) + 1))[:size])
    return path


def sha256_base64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def test_upload_get_delete_small_file(client: genai.Client, tmp_path: Path) -> None:
    path = jsonl(tmp_path / "requests.jsonl", 398)
    file = client.files.upload(
        file=path,
        config=types.UploadFileConfig(display_name="my-batch-requests", mime_type="jsonl"),
    )
    assert file.name and file.name.startswith("files/")
    assert file.display_name == "my-batch-requests"
    assert file.mime_type == "jsonl"
    assert file.size_bytes == 398
    # Like Gemini: base64 of the raw digest, not hex.
    assert file.sha256_hash == sha256_base64(path.read_bytes())
    assert file.state == types.FileState.ACTIVE
    assert file.source == types.FileSource.UPLOADED
    assert file.download_uri is None
    assert file.create_time and file.expiration_time and file.expiration_time > file.create_time

    got = client.files.get(name=file.name)
    assert got.name == file.name and got.size_bytes == 398
    assert client.files.get(name=file.name.removeprefix("files/")).name == file.name

    with pytest.raises(errors.ClientError) as refused:
        client.files.download(file=file.name)
    assert refused.value.code == 400

    client.files.delete(name=file.name)
    with pytest.raises(errors.ClientError) as gone:
        client.files.get(name=file.name)
    assert gone.value.code == 404 and gone.value.status == "NOT_FOUND"


def test_upload_multi_chunk_file(client: genai.Client, tmp_path: Path) -> None:
    size = 8 * 1024 * 1024 + 1234  # two chunks: 8 MiB, then the rest with finalize
    path = jsonl(tmp_path / "big.jsonl", size)
    file = client.files.upload(
        file=path, config=types.UploadFileConfig(display_name="big", mime_type="jsonl")
    )
    assert file.size_bytes == size
    assert file.sha256_hash == sha256_base64(path.read_bytes())
    client.files.delete(name=file.name)


def test_upload_with_custom_name(client: genai.Client, tmp_path: Path) -> None:
    path = jsonl(tmp_path / "named.jsonl", 100)
    name = f"files/custom-{abs(hash(str(tmp_path))) % 10**9}"
    file = client.files.upload(
        file=path, config=types.UploadFileConfig(name=name, mime_type="application/jsonl")
    )
    assert file.name == name
    with pytest.raises(errors.ClientError) as taken:
        client.files.upload(file=path, config=types.UploadFileConfig(name=name, mime_type="jsonl"))
    assert taken.value.code == 409
    client.files.delete(name=name)


def test_list_pages(client: genai.Client, tmp_path: Path) -> None:
    before = {f.name for f in client.files.list()}
    made = []
    for i in range(5):
        path = jsonl(tmp_path / f"f{i}.jsonl", 50 + i)
        made.append(
            client.files.upload(
                file=path, config=types.UploadFileConfig(display_name=f"f{i}", mime_type="jsonl")
            ).name
        )
    pager = client.files.list(config=types.ListFilesConfig(page_size=2))
    assert pager.page_size == 2 and len(pager.page) == 2
    listed = [f.name for f in pager if f.name not in before]
    assert listed == list(reversed(made))  # newest first, across three pages
    for name in made:
        client.files.delete(name=name)
