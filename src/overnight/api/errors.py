"""Errors rendered Google-style, in one place: ``{"error": {code, message, status}}``.

Only HTTP 200 counts as success for the SDK (spec §1.3), so every failure maps to a
4xx/5xx with a canonical status string.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match

from overnight.domain.lines import describe_validation_error
from overnight.errors import OvernightError

log = logging.getLogger("overnight.api")

_HTTP_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "ALREADY_EXISTS",
    413: "INVALID_ARGUMENT",
    415: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def error_response(
    code: int, message: str, status: str | None = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    status = status or _HTTP_STATUS.get(code, "UNKNOWN")
    return JSONResponse(
        {"error": {"code": code, "message": message, "status": status}},
        status_code=code,
        headers=headers,
    )


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette names only the first route's)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, BaseRoute) and route.matches(request.scope)[0] is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(OvernightError)
    async def _overnight(_: Request, exc: OvernightError) -> JSONResponse:
        if exc.http_code >= 500:
            log.warning("%s: %s", exc.status, exc.message)
        return error_response(exc.http_code, exc.message, exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ()) if p != "body"]
            where = ".".join(loc) or "body"
            if err.get("type") == "json_invalid":
                problems.append(
                    f"invalid JSON payload: {err.get('ctx', {}).get('error', err['msg'])}"
                )
            else:
                problems.append(f"{where}: {err['msg']}")
        return error_response(400, "; ".join(problems) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        headers = dict(exc.headers or {})
        if exc.status_code == 404 and message == "Not Found":
            message = "no such API path; see docs/api.md for the routes Overnight serves"
        if exc.status_code == 405:
            allowed = allowed_methods(request) or [headers.get("Allow", "")]
            headers["Allow"] = ", ".join(allowed)
            message = f"{request.method} is not allowed here; this path takes {', '.join(allowed)}"
        return error_response(exc.status_code, message, headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}")


__all__ = [
    "allowed_methods",
    "describe_validation_error",
    "error_response",
    "install_error_handlers",
]
