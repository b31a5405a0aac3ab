"""The batch input line: ``{"key": "...", "request": {...}}`` (spec §9).

``parse_line`` turns one JSONL line into a keyed canonical request, or raises
``LineError`` with a message that names the line and the problem. The engine turns a
``LineError`` into that line's error result; it never fails the batch.

An inline batch's requests are written out as lines too (``services.batches``), one
per item; their errors name the item as the client sent it, ``inlinedRequests[i]``
(0-based, the position of its answer in ``inlinedResponses``), not a line number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from overnight.domain.batches import BatchKind
from overnight.domain.fields import unknown_name
from overnight.domain.requests import EmbedRequest, GenerateRequest
from overnight.errors import InvalidArgument

_LINE_FIELDS = {"key", "request", "metadata"}


class LineError(InvalidArgument):
    """One input line is malformed. ``key`` is its key when one could be read."""

    def __init__(
        self,
        line_no: int,
        problem: str,
        key: str | None = None,
        metadata: Any = None,
        *,
        inline: bool = False,
    ) -> None:
        super().__init__(f"{position(line_no, inline)}: {problem}")
        self.line_no = line_no
        self.key = key if key is not None else line_key(line_no)
        self.metadata = metadata  # echoed on the error line, like a success's


@dataclass(frozen=True, slots=True)
class RequestLine:
    key: str
    line_no: int
    request: GenerateRequest | EmbedRequest
    metadata: Any = None  # echoed into the result line (inline batches use it)


def position(line_no: int, inline: bool = False) -> str:
    """How errors name a request: ``line 3`` in a file, ``inlinedRequests[2]`` inline."""
    return f"inlinedRequests[{line_no - 1}]" if inline else f"line {line_no}"


def line_key(line_no: int) -> str:
    """The key used for a line that has none: ``line:<n>`` (1-based)."""
    return f"line:{line_no}"


def is_blank(raw: bytes) -> bool:
    return not raw.strip()


def describe_validation_error(exc: ValidationError, prefix: str = "request") -> str:
    """One readable sentence per problem, with the field path in wire spelling."""
    problems = []
    for err in exc.errors(include_url=False):
        loc = err["loc"]
        path = _path(prefix, loc)
        if err["type"] == "extra_forbidden":
            problems.append(unknown_name(str(loc[-1]), _path(prefix, loc[:-1]).lstrip(".")))
        elif err["type"] == "missing":
            problems.append(f"{path}: required field is missing")
        else:
            got = err.get("input")
            shown = "" if isinstance(got, dict | list) else f" (got {got!r:.60})"
            problems.append(f"{path}: {err['msg']}{shown}")
    # Gemini's unknown-name sentences end with a full stop; the others are phrases.
    return "".join(p + (" " if p.endswith(".") else "; ") for p in problems).rstrip("; ")


def _path(prefix: str, loc: tuple[int | str, ...]) -> str:
    return prefix + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)


def parse_request(
    body: Any, kind: BatchKind, prefix: str = "request"
) -> GenerateRequest | EmbedRequest:
    """Validate one request object; raises ``InvalidArgument`` naming each bad field."""
    model = GenerateRequest if kind is BatchKind.GENERATE else EmbedRequest
    if not isinstance(body, dict):
        raise InvalidArgument(f"{prefix} must be a JSON object, got {type(body).__name__}")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise InvalidArgument(describe_validation_error(exc, prefix)) from None


def parse_line(raw: bytes, line_no: int, kind: BatchKind, *, inline: bool = False) -> RequestLine:
    """Parse one non-blank input line. Raises ``LineError``; ``inline`` says the line
    holds an inline batch's item, so that the error names ``inlinedRequests[i]``.

    A UTF-8 byte order mark before the first line is ignored (admission skips it too).
    """

    def error(problem: str, key: str | None = None, metadata: Any = None) -> LineError:
        return LineError(line_no, problem, key, metadata, inline=inline)

    if line_no == 1:
        raw = raw.removeprefix(b"\xef\xbb\xbf")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise error(f"invalid JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(obj, dict):
        raise error(f"expected a JSON object, got {type(obj).__name__}")
    key_value = obj.get("key")
    key: str | None = None
    if key_value is not None:
        if not isinstance(key_value, str):
            raise error(f"'key' must be a string, got {type(key_value).__name__}")
        key = key_value
    metadata = obj.get("metadata")
    unknown = sorted(set(obj) - _LINE_FIELDS)
    if unknown:
        named = " ".join(unknown_name(name) for name in unknown)
        raise error(f"{named} A line holds 'key', 'request' and 'metadata'.", key, metadata)
    if "request" not in obj:
        raise error(
            'missing \'request\' (each line is {"key": ..., "request": {...}})', key, metadata
        )
    try:
        request = parse_request(obj["request"], kind)
    except InvalidArgument as exc:
        raise error(exc.message, key, metadata) from None
    return RequestLine(
        key=key if key is not None else line_key(line_no),
        line_no=line_no,
        request=request,
        metadata=metadata,
    )
