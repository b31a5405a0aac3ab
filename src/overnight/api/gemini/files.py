"""Gemini API routes: files (spec §3.3-3.5): get, list, delete, download.

``render_file`` is the one place a file becomes wire JSON; batch routes use it too.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from overnight.api.deps import BaseDep, ServicesDep, TenantDep, VersionDep
from overnight.api.openapi import answers
from overnight.api.paging import PageRequest, paging
from overnight.api.wire import int64, timestamp
from overnight.domain.files import File, FileSource

DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 100
FilesPage = Annotated[
    PageRequest, Depends(paging(default=DEFAULT_PAGE_SIZE, maximum=MAX_PAGE_SIZE))
]

router = APIRouter()


def render_file(file: File, base: str, version: str) -> dict[str, Any]:
    """The File resource, camelCase. ``downloadUri`` only for generated files."""
    body: dict[str, Any] = {
        "name": file.name,
        "displayName": file.display_name,
        "mimeType": file.mime_type,
        "sizeBytes": int64(file.size_bytes),
        "createTime": timestamp(file.create_time),
        "updateTime": timestamp(file.update_time),
        "sha256Hash": sha256_hash(file.sha256),
        "uri": f"{base}/{version}/files/{file.id}",
        "state": file.state.value,
        "source": file.source.value,
    }
    if file.expire_time is not None:
        body["expirationTime"] = timestamp(file.expire_time)
    if file.source is FileSource.GENERATED:
        body["downloadUri"] = f"{base}/{version}/files/{file.id}:download?alt=media"
    return body


def sha256_hash(hex_digest: str) -> str:
    """``sha256Hash`` as Gemini gives it: the raw digest in base64 (the store keeps hex)."""
    try:
        return base64.b64encode(bytes.fromhex(hex_digest)).decode()
    except ValueError:
        return hex_digest


async def _download(services: ServicesDep, tenant: str, file_id: str) -> StreamingResponse:
    file, chunks = await services.files.open_download(tenant, file_id)
    media_type = file.mime_type if "/" in file.mime_type else "application/octet-stream"
    return StreamingResponse(
        chunks, media_type=media_type, headers={"Content-Length": str(file.size_bytes)}
    )


# ``:download`` routes come before ``files/{file_id}``, which would otherwise match them.
_BYTES: dict[int | str, Any] = {
    200: {
        "description": "The file's bytes (generated files only)",
        "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
    }
}


@router.get("/{version}/files/{file_id}:download", response_model=None, responses=_BYTES)
async def download_file(
    version: VersionDep, file_id: str, services: ServicesDep, tenant: TenantDep
) -> StreamingResponse:
    """The bytes of a generated file (``?alt=media``), streamed."""
    return await _download(services, tenant, file_id)


@router.get("/download/{version}/files/{file_id}:download", response_model=None, responses=_BYTES)
async def download_file_docs_path(
    version: VersionDep, file_id: str, services: ServicesDep, tenant: TenantDep
) -> StreamingResponse:
    """The same, under the path the Gemini docs' REST example uses."""
    return await _download(services, tenant, file_id)


@router.get("/{version}/files/{file_id}", response_model=None, responses=answers("File"))
async def get_file(
    version: VersionDep, file_id: str, services: ServicesDep, tenant: TenantDep, base: BaseDep
) -> dict[str, Any]:
    file = await services.files.get(tenant, file_id)
    return render_file(file, base, version)


@router.get("/{version}/files", response_model=None, responses=answers("ListFilesResponse"))
async def list_files(
    version: VersionDep,
    services: ServicesDep,
    tenant: TenantDep,
    base: BaseDep,
    page: FilesPage,
) -> dict[str, Any]:
    """Newest first; ``nextPageToken`` while more remain."""
    files = await services.files.list_page(tenant, limit=page.fetch, after=page.after)
    return page.answer("files", files, lambda file: render_file(file, base, version))


@router.delete("/{version}/files/{file_id}", response_model=None, responses=answers("Empty"))
async def delete_file(
    version: VersionDep, file_id: str, services: ServicesDep, tenant: TenantDep
) -> dict[str, Any]:
    await services.files.delete(tenant, file_id)
    return {}
