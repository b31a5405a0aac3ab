"""File records: uploaded inputs and generated outputs."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class FileSource(enum.StrEnum):
    UPLOADED = "UPLOADED"
    GENERATED = "GENERATED"


class FileState(enum.StrEnum):
    PROCESSING = "PROCESSING"
    ACTIVE = "ACTIVE"
    FAILED = "FAILED"


@dataclass(frozen=True, slots=True)
class File:
    """A file resource; its bytes live in the blob store under ``blob_key``."""

    id: str
    tenant: str
    display_name: str
    mime_type: str
    size_bytes: int
    sha256: str
    blob_key: str
    source: FileSource
    state: FileState
    create_time: float
    update_time: float
    expire_time: float | None

    @property
    def name(self) -> str:
        return f"files/{self.id}"
