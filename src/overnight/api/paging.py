"""Keyset pagination for list routes: ``pageSize`` and ``pageToken`` in, a page out.

Lists run newest first. A page token is opaque to clients: it holds the (create_time,
id) of the previous page's last row, so a page never skips or repeats a row when rows
are added meanwhile. Each list route declares its sizes with ``paging``::

    FilesPage = Annotated[PageRequest, Depends(paging(default=10, maximum=100))]
"""

# No ``from __future__ import annotations`` here: FastAPI reads the parameters of the
# dependency that ``paging`` makes at run time, and their ``Query`` descriptions use
# that call's arguments, which a string annotation could not see.

import base64
import binascii
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Protocol, TypeVar

import orjson
from fastapi import Query

from overnight.errors import InvalidArgument


class Listed(Protocol):
    """A row a list returns: its page token is made from these two."""

    @property
    def create_time(self) -> float: ...

    @property
    def id(self) -> str: ...


R = TypeVar("R", bound=Listed)


@dataclass(frozen=True, slots=True)
class PageRequest:
    """One page asked for: at most ``size`` rows, after the row ``after`` (None: the first)."""

    size: int
    after: tuple[float, str] | None

    @property
    def fetch(self) -> int:
        """How many rows to read: one past the page, to learn whether more remain."""
        return self.size + 1

    def answer(
        self, field: str, rows: Sequence[R], render: Callable[[R], dict[str, Any]]
    ) -> dict[str, Any]:
        """``{field: [...], "nextPageToken"?}`` from up to ``fetch`` rows."""
        body: dict[str, Any] = {field: [render(row) for row in rows[: self.size]]}
        if len(rows) > self.size:
            last = rows[self.size - 1]
            body["nextPageToken"] = encode_page_token(last.create_time, last.id)
        return body


def paging(*, default: int, maximum: int) -> Callable[..., PageRequest]:
    """A dependency reading ``pageSize`` (none or under 1: ``default``; capped at
    ``maximum``) and ``pageToken``. Raises ``InvalidArgument`` for a token not ours."""

    def page_request(
        page_size: Annotated[
            int | None,
            Query(alias="pageSize", description=f"default {default}; larger sizes get {maximum}"),
        ] = None,
        page_token: Annotated[
            str | None, Query(alias="pageToken", description="a nextPageToken")
        ] = None,
    ) -> PageRequest:
        size = default if not page_size or page_size <= 0 else min(page_size, maximum)
        return PageRequest(size, decode_page_token(page_token) if page_token else None)

    return page_request


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
