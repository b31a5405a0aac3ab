"""Gemini API routes: the resumable upload protocol (spec §3.1-3.2).

``POST /upload/{v}/files`` with ``X-Goog-Upload-Command: start`` opens a session and
answers its absolute URL in ``X-Goog-Upload-URL``. Chunks are ``POST``ed to that URL
(the same path plus ``?upload_id=``) with ``X-Goog-Upload-Command: upload`` or
``upload, finalize`` and ``X-Goog-Upload-Offset``. Chunk requests carry no API key:
the ``upload_id`` is the credential. Their body is raw bytes whatever their
Content-Type says, and is streamed, never read whole.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from overnight.api.body import read_json_object
from overnight.api.deps import BaseDep, ServicesDep, VersionDep, get_tenant
from overnight.api.gemini.bodies import UPLOAD_START
from overnight.api.gemini.files import render_file
from overnight.api.openapi import header, query, ref
from overnight.domain.fields import check_known
from overnight.domain.files import File
from overnight.domain.uploads import Upload
from overnight.errors import InvalidArgument
from overnight.services.uploads import CHUNK_GRANULARITY, UploadService

MAX_START_BODY = 64 * 1024

router = APIRouter()


_PROTOCOL = {
    "parameters": [
        query("upload_id", "The session (from X-Goog-Upload-URL); absent on start"),
        query("upload_protocol", "resumable"),
        header("X-Goog-Upload-Protocol", "resumable", {"type": "string", "enum": ["resumable"]}),
        header(
            "X-Goog-Upload-Command",
            "start (no upload_id); then upload, 'upload, finalize', query or cancel",
            {
                "type": "string",
                "enum": ["start", "upload", "upload, finalize", "query", "cancel"],
            },
        ),
        header(
            "X-Goog-Upload-Offset",
            "Byte offset of this chunk in the file",
            {"type": "integer", "minimum": 0},
        ),
        header(
            "X-Goog-Upload-Header-Content-Length",
            "Start: the file's size in bytes",
            {"type": "integer", "minimum": 0},
        ),
        header("X-Goog-Upload-Header-Content-Type", "Start: the file's MIME type, e.g. jsonl"),
        header("X-Goog-Upload-File-Name", "Start: the file's base name (ignored)"),
    ],
    "requestBody": {
        "description": 'Start: {"file": {...}} (JSON). A chunk: the raw bytes, whatever its '
        "Content-Type says (at most server.max_upload_bytes).",
        "content": {
            "application/json": {"schema": ref("UploadStartRequest")},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
}
_ANSWERS: dict[int | str, Any] = {
    200: {
        "description": "Start: an empty body and X-Goog-Upload-URL. A chunk: "
        'X-Goog-Upload-Status active (empty body), or final with {"file": File}.',
        "headers": {
            "X-Goog-Upload-URL": {"schema": {"type": "string"}},
            "X-Goog-Upload-Status": {
                "schema": {"type": "string", "enum": ["active", "final", "cancelled"]}
            },
        },
    }
}


@router.post(
    "/upload/{version}/files",
    response_class=Response,
    responses=_ANSWERS,
    openapi_extra=_PROTOCOL,
)
async def upload(
    request: Request, version: VersionDep, services: ServicesDep, base: BaseDep
) -> Response:
    """Start a session (no ``upload_id``), or take one chunk of it."""
    uploads = services.uploads
    token = request.query_params.get("upload_id")
    command = _command(request)
    if token is None:
        if command not in ({"start"}, set()):
            raise InvalidArgument(
                "only the resumable upload protocol is supported: start a session with "
                "X-Goog-Upload-Protocol: resumable and X-Goog-Upload-Command: start"
            )
        return await _start(request, uploads, version, base)
    if command == {"query"}:
        return _active(await uploads.status(token))
    if command == {"cancel"}:
        await uploads.cancel(token)
        return JSONResponse({}, headers={"X-Goog-Upload-Status": "cancelled"})
    if not command or not command <= {"upload", "finalize"}:
        raise InvalidArgument(
            f"X-Goog-Upload-Command {request.headers.get('x-goog-upload-command')!r} is not "
            "supported; send 'upload', 'upload, finalize', 'query' or 'cancel'"
        )
    offset = _int_header(request, "x-goog-upload-offset")
    if offset is None:
        raise InvalidArgument("a chunk needs the X-Goog-Upload-Offset header")
    result = await uploads.append(token, offset, request.stream(), finalize="finalize" in command)
    if isinstance(result, File):
        return JSONResponse(
            {"file": render_file(result, base, version)},
            headers={"X-Goog-Upload-Status": "final"},
        )
    return _active(result)


async def _start(request: Request, uploads: UploadService, version: str, base: str) -> Response:
    tenant = await get_tenant(request)
    spec = await _start_body(request)
    size = _int_header(request, "x-goog-upload-header-content-length")
    if size is None and _field(spec, "size_bytes", "sizeBytes") is not None:
        size = _as_int(_field(spec, "size_bytes", "sizeBytes"), "file.size_bytes")
    mime_type = request.headers.get("x-goog-upload-header-content-type") or _field(
        spec, "mime_type", "mimeType"
    )
    token = await uploads.start(
        tenant,
        name=_str_field(spec, "name", "name"),
        display_name=_str_field(spec, "display_name", "displayName") or "",
        mime_type=str(mime_type) if mime_type else "application/octet-stream",
        size_bytes=size,
    )
    url = f"{base}/upload/{version}/files?upload_id={token}&upload_protocol=resumable"
    return Response(
        status_code=200,
        headers={
            "X-Goog-Upload-URL": url,
            "X-Goog-Upload-Control-URL": url,
            "X-Goog-Upload-Status": "active",
            "X-Goog-Upload-Chunk-Granularity": str(CHUNK_GRANULARITY),
        },
    )


async def _start_body(request: Request) -> dict[str, Any]:
    """The ``file`` object of the start request (``{}`` if none), read with a bound."""
    body = await read_json_object(
        request,
        shape='{"file": {...}}',
        limit=MAX_START_BODY,
        too_large=f"the upload start request body is over {MAX_START_BODY} bytes; "
        "send the file's bytes to the upload URL instead",
    )
    check_known(body, UPLOAD_START)
    spec = body.get("file", {})
    if not isinstance(spec, dict):
        raise InvalidArgument('the upload start body must look like {"file": {...}}')
    return spec


def _active(upload: Upload) -> Response:
    return Response(
        status_code=200,
        headers={
            "X-Goog-Upload-Status": "active",
            "X-Goog-Upload-Size-Received": str(upload.received),
        },
    )


def _command(request: Request) -> set[str]:
    raw = request.headers.get("x-goog-upload-command", "")
    return {part.strip().lower() for part in raw.split(",") if part.strip()}


def _field(spec: dict[str, Any], snake: str, camel: str) -> Any:
    return spec[snake] if snake in spec else spec.get(camel)


def _str_field(spec: dict[str, Any], snake: str, camel: str) -> str | None:
    value = _field(spec, snake, camel)
    if value is not None and not isinstance(value, str):
        raise InvalidArgument(f"file.{snake} must be a string")
    return value


def _int_header(request: Request, name: str) -> int | None:
    value = request.headers.get(name)
    return None if value is None else _as_int(value, name)


def _as_int(value: Any, what: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InvalidArgument(f"{what} must be an integer, got {value!r}") from None
    if number < 0:
        raise InvalidArgument(f"{what} must not be negative, got {number}")
    return number
