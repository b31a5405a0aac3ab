"""Parts that point at an uploaded file (``fileData``), resolved to the file's bytes.

A ``fileData`` part names a file of the Files API, as ``files/abc`` or its full URI
(``http://host/v1beta/files/abc``). No backend reads the store, so before a request
reaches a model that takes images, each such part is rewritten into an ``inlineData``
part carrying the file's bytes: the OpenAI backend sends it as a data URL, the Gemini
backend as ``inlineData`` (a local URI means nothing to Google). The caller checks the
model's capabilities first, so a text-only model keeps its per-request error and no
file is read. A file over ``FILE_PART_MAX_BYTES`` is refused, like Gemini's inline cap.
A URI that names no file of this service (``gs://…``) is left as it is.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from overnight.domain.requests import Blob, Content, GenerateRequest, Part
from overnight.errors import InvalidArgument, NotFound

FILE_PART_MAX_BYTES = 20 * 1024 * 1024

FileReader = Callable[[str], Awaitable[tuple[str, bytes]]]
"""``file id → (mimeType, bytes)`` for one tenant's files. Raises ``NotFound`` for a
missing, expired or another tenant's file and ``InvalidArgument`` for one too large."""

TenantFileReader = Callable[[str, str, int], Awaitable[tuple[str, bytes]]]
"""``(tenant, file id, max bytes) → (mimeType, bytes)``: ``FileService.read_part``."""

_FILE_URI = re.compile(r"^(?:[a-z][a-z0-9+.-]*://[^/]+(?:/[^?#]*)?/v1(?:beta)?/)?files/([^/?#]+)$")


def file_id(uri: str) -> str | None:
    """The file id a ``fileUri`` names (``files/abc`` or ``…/v1beta/files/abc``), else None."""
    match = _FILE_URI.match(uri.strip())
    return match.group(1) if match else None


def has_file_parts(request: GenerateRequest) -> bool:
    """Whether any part of ``request`` names a file of this service."""
    return any(
        part.file_data is not None and file_id(part.file_data.file_uri) is not None
        for content in _contents(request)
        for part in content.parts
    )


def reader_for(read: TenantFileReader, tenant: str) -> FileReader:
    """``read`` bound to one tenant and the ``FILE_PART_MAX_BYTES`` cap."""

    async def read_one(name: str) -> tuple[str, bytes]:
        return await read(tenant, name, FILE_PART_MAX_BYTES)

    return read_one


async def resolve_file_parts(request: GenerateRequest, read: FileReader) -> GenerateRequest:
    """``request`` with every ``fileData`` part that names a file of this service
    replaced by an ``inlineData`` part holding its bytes. Each file is read once.

    ``NotFound``/``InvalidArgument`` from ``read`` propagate, the part's path prefixed.
    """
    cache: dict[str, tuple[str, bytes]] = {}

    async def resolve(path: str, content: Content) -> Content:
        parts: list[Part] = []
        changed = False
        for j, part in enumerate(content.parts):
            name = file_id(part.file_data.file_uri) if part.file_data is not None else None
            if part.file_data is None or name is None:
                parts.append(part)
                continue
            if name not in cache:
                try:
                    cache[name] = await read(name)
                except (NotFound, InvalidArgument) as exc:
                    raise type(exc)(f"{path}.parts[{j}].fileData: {exc.message}") from None
            stored_type, data = cache[name]
            mime_type = part.file_data.mime_type or stored_type
            blob = Blob.model_construct(mime_type=mime_type, data=data)
            update = {"file_data": None, "inline_data": blob}
            parts.append(part.model_copy(update=update))
            changed = True
        return content.model_copy(update={"parts": parts}) if changed else content

    contents = [await resolve(f"contents[{i}]", c) for i, c in enumerate(request.contents)]
    update: dict[str, object] = {"contents": contents}
    if request.system_instruction is not None:
        update["system_instruction"] = await resolve(
            "systemInstruction", request.system_instruction
        )
    return request.model_copy(update=update)


def _contents(request: GenerateRequest) -> list[Content]:
    extra = [request.system_instruction] if request.system_instruction is not None else []
    return [*request.contents, *extra]
