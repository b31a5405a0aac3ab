"""The batch input line: ``{"key": "...", "request": {...}}`` (spec §9).

``parse_line`` turns one JSONL line into a keyed canonical request, or raises
``LineError`` with a message that names the line number and the problem. The
engine turns a ``LineError`` into that line's error result; it never fails the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from overnight.domain.batches import BatchKind
from overnight.domain.requests import EmbedRequest, GenerateRequest
from overnight.errors import InvalidArgument

_LINE_FIELDS = {"key", "request", "metadata"}


class LineError(InvalidArgument):
    """One input line is malformed. ``key`` is its key when one could be read."""

    def __init__(
        self, line_no: int, problem: str, key: str | None = None, metadata: Any = None
    ) -> None:
        super().__init__(f"line {line_no}: {problem}")
        self.line_no = line_no
        self.key = key if key is not None else line_key(line_no)
        self.metadata = metadata  # echoed on the error line, like a success's


@dataclass(frozen=True, slots=True)
class RequestLine:
    key: str
    line_no: int
    request: GenerateRequest | EmbedRequest
    metadata: Any = None  # echoed into the result line (inline batches use it)


def line_key(line_no: int) -> str:
    """The key used for a line that has none: ``line:<n>`` (1-based)."""
    return f"line:{line_no}"


def is_blank(raw: bytes) -> bool:
    return not raw.strip()


def describe_validation_error(exc: ValidationError, prefix: str = "request") -> str:
    """One readable sentence per problem, with the field path in wire spelling."""
    problems = []
    for err in exc.errors(include_url=False):
        path = prefix + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
        if err["type"] == "extra_forbidden":
            problems.append(f"{path}: unknown field")
        elif err["type"] == "missing":
            problems.append(f"{path}: required field is missing")
        else:
            got = err.get("input")
            shown = "" if isinstance(got, dict | list) else f" (got {got!r:.60})"
            problems.append(f"{path}: {err['msg']}{shown}")
    return "; ".join(problems)


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


def parse_line(raw: bytes, line_no: int, kind: BatchKind) -> RequestLine:
    """Parse one non-blank input line. Raises ``LineError``.

    A UTF-8 byte order mark before the first line is ignored (admission skips it too).
    """
    if line_no == 1:
        raw = raw.removeprefix(b"\xef\xbb\xbf")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise LineError(line_no, f"invalid JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(obj, dict):
        raise LineError(line_no, f"expected a JSON object, got {type(obj).__name__}")
    key_value = obj.get("key")
    key: str | None = None
    if key_value is not None:
        if not isinstance(key_value, str):
            raise LineError(line_no, f"'key' must be a string, got {type(key_value).__name__}")
        key = key_value
    metadata = obj.get("metadata")
    unknown = sorted(set(obj) - _LINE_FIELDS)
    if unknown:
        raise LineError(
            line_no,
            f"unknown field(s) {', '.join(unknown)}; a line holds 'key' and 'request'",
            key,
            metadata,
        )
    if "request" not in obj:
        raise LineError(
            line_no,
            'missing \'request\' (each line is {"key": ..., "request": {...}})',
            key,
            metadata,
        )
    try:
        request = parse_request(obj["request"], kind)
    except InvalidArgument as exc:
        raise LineError(line_no, exc.message, key, metadata) from None
    return RequestLine(
        key=key if key is not None else line_key(line_no),
        line_no=line_no,
        request=request,
        metadata=metadata,
    )
