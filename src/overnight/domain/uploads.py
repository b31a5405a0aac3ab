"""Resumable upload sessions: a file being received in chunks (spec §3.1-3.2)."""

from __future__ import annotations

from dataclasses import dataclass

UNKNOWN_SIZE = -1


@dataclass(frozen=True, slots=True)
class Upload:
    """One session. ``id`` is the SHA-256 of the URL's ``upload_id`` token, never the token.

    ``size_bytes`` is the declared size, or ``UNKNOWN_SIZE`` when the client declared
    none; ``received`` counts the bytes already appended to the staging blob.
    """

    id: str
    tenant: str
    file_id: str
    display_name: str
    mime_type: str
    size_bytes: int
    received: int
    expire_time: float

    @property
    def staging_key(self) -> str:
        return f"uploads/{self.id}.part"

    @property
    def blob_key(self) -> str:
        """Where finalize puts the bytes: a key of this session's own, so that no two
        uploads (even of one name, racing) ever write, or remove, the same blob."""
        return f"files/{self.tenant}/{self.file_id}.{self.id[:16]}"
