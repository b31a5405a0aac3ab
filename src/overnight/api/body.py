"""Reading a JSON request body: bounded, parsed, and checked to be an object.

Every route that takes a JSON body reads it here, so that all of them answer a bad
body alike: 400 ``INVALID_ARGUMENT`` saying what was wrong and what was expected.
(The ``BodyLimit`` middleware already bounds every body by ``server.max_request_bytes``;
a route with a tighter bound of its own passes ``limit``.)
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request

from overnight.errors import InvalidArgument

_JSON_TYPES = {
    dict: "an object",
    list: "an array",
    str: "a string",
    bool: "a boolean",
    int: "a number",
    float: "a number",
    type(None): "null",
}


async def read_json_object(
    request: Request,
    *,
    shape: str = "",
    limit: int | None = None,
    too_large: str = "",
    required: bool = False,
) -> dict[str, Any]:
    """The request's body, a JSON object; ``{}`` for an empty body unless ``required``.

    ``shape`` shows what the body should look like (``{"batch": {...}}``) in the error
    for a body that is not an object. Past ``limit`` bytes the error is ``too_large``,
    raised before reading when ``Content-Length`` already says so; the body is streamed
    and never held past the limit. Raises ``InvalidArgument``.
    """
    body = await _read(request, limit, too_large)
    if not body.strip() and not required:
        return {}
    try:
        parsed = orjson.loads(body) if body.strip() else None
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"invalid JSON payload: {exc.msg} at column {exc.colno}") from None
    if not isinstance(parsed, dict):
        like = f" like {shape}" if shape else ""
        got = "nothing" if not body.strip() else _JSON_TYPES.get(type(parsed), "another value")
        raise InvalidArgument(f"the request body must be a JSON object{like}, got {got}")
    return parsed


async def _read(request: Request, limit: int | None, too_large: str) -> bytes:
    if limit is None:
        return await request.body()
    refusal = InvalidArgument(too_large or f"the request body is over {limit} bytes")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise refusal
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise refusal
    return bytes(body)
