"""A bound on every request body, before any route reads it.

A declared ``Content-Length`` over ``server.max_request_bytes`` is answered 413 at
once, without reading a byte. A body without one (chunked) is counted as it streams,
and the request is answered 413 as soon as it passes the limit. The default leaves
room for Gemini's 20 MB inline batch.

Upload chunks (``/upload/{v}/files?upload_id=…``) are the exception: the upload
service streams them to disk and bounds each session by ``server.max_upload_bytes``
and its declared size as the bytes arrive, answering 400 with the setting's name.
"""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from overnight.api.errors import error_response
from overnight.config import ServerSettings


class BodyTooLarge(Exception):
    """Raised from ``receive`` once a streamed body passes the limit; never leaves here."""


class BodyLimit:
    def __init__(self, app: ASGIApp, settings: ServerSettings) -> None:
        self.app = app
        self.limit = settings.max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _upload_chunk(scope):
            await self.app(scope, receive, send)
            return
        limit, setting = self.limit, "server.max_request_bytes"
        declared = next((v for k, v in scope["headers"] if k.lower() == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_large(limit, setting)(scope, receive, send)
            return
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except BodyTooLarge:
            if started:
                raise
            await _too_large(limit, setting)(scope, receive, send)


def _too_large(limit: int, setting: str) -> JSONResponse:
    env = "OVERNIGHT_" + setting.upper().replace(".", "__")
    return error_response(
        413,
        f"the request body is larger than this server's limit of {limit} bytes "
        f"(setting {setting}, {env}); for many requests, upload them as a JSONL file "
        "and create a file batch",
    )


def _upload_chunk(scope: Scope) -> bool:
    parts = scope["path"].strip("/").split("/")
    return (
        len(parts) == 3
        and parts[0] == "upload"
        and parts[2] == "files"
        and b"upload_id=" in scope.get("query_string", b"")
    )
