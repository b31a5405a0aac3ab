"""Wire formatting shared by the routes: timestamps, int64 strings, resource names."""

from __future__ import annotations

import base64
import binascii
import datetime as dt

import orjson

from overnight.errors import InvalidArgument


def timestamp(seconds: float | None) -> str | None:
    """RFC 3339 with a ``Z`` and microseconds, as Google emits (spec §1.4)."""
    if seconds is None:
        return None
    moment = dt.datetime.fromtimestamp(seconds, tz=dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def int64(value: int) -> str:
    """int64 fields travel as JSON strings."""
    return str(int(value))


def strip_prefix(name: str, prefix: str) -> str:
    """``files/abc`` → ``abc``; a bare id stays as it is."""
    return name[len(prefix) + 1 :] if name.startswith(prefix + "/") else name


def encode_page_token(create_time: float, resource_id: str) -> str:
    """An opaque token for keyset pagination: the last row's (create_time, id)."""
    raw = orjson.dumps([create_time, resource_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str) -> tuple[float, str]:
    """Raises ``InvalidArgument`` for a token we did not make."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        create_time, resource_id = orjson.loads(raw)
        if not isinstance(resource_id, str):
            raise ValueError(resource_id)
        return float(create_time), resource_id
    except (binascii.Error, ValueError, TypeError, orjson.JSONDecodeError):
        raise InvalidArgument(
            f"pageToken {token!r} is not valid; pass the nextPageToken of the previous page"
        ) from None
