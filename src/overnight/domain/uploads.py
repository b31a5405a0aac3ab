"""Resumable upload sessions: a file being received in chunks (spec §3.1-3.2)."""

from __future__ import annotations

from dataclasses import dataclass

UNKNOWN_SIZE = -1


@dataclass(frozen=True, slots=True)
class Upload:
    """One session. ``id`` is the SHA-256 of the URL's ``upload_id`` token, never the token.

    ``size_bytes`` is the declared size, or ``UNKNOWN_SIZE`` when the client declared
    none; ``received`` counts the bytes already appended to the staged blob (its key,
    and the key finalize publishes it under, are in ``blobs.keys``).
    """

    id: str
    tenant: str
    file_id: str
    display_name: str
    mime_type: str
    size_bytes: int
    received: int
    expire_time: float
