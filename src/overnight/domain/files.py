"""File records: uploaded inputs and generated outputs.

File ids are per tenant: two tenants may each have a ``files/report``, as two Google
projects may. Generated files (a batch's responses) are named ``files/batch<batch id>``,
and requested names cannot take that form, so a user's file can never stand where a
batch's results will be written.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

GENERATED_PREFIX = "batch"
# A requested id: lowercase letters, digits and '-' (spec §3.6).
_REQUESTED_ID = re.compile(r"[a-z0-9-]{1,40}")
# The generated form: "batch" and then only letters and digits (batch ids have no '-').
_GENERATED_ID = re.compile(rf"{GENERATED_PREFIX}[a-z0-9]*")


def responses_file_id(batch_id: str) -> str:
    """The id of a batch's responses file (``files/batch<batch id>``, as Gemini names them)."""
    return f"{GENERATED_PREFIX}{batch_id}"


def requested_name_problem(file_id: str) -> str | None:
    """Why ``file_id`` cannot be a requested file name, or None when it can."""
    if not _REQUESTED_ID.fullmatch(file_id):
        return "use files/ID where ID is 1-40 lowercase letters, digits or '-'"
    if _GENERATED_ID.fullmatch(file_id):
        return (
            f"names that start with '{GENERATED_PREFIX}' and hold no '-' are reserved for "
            f"batch responses files (files/{GENERATED_PREFIX}<batch id>); choose another, "
            f"e.g. files/{GENERATED_PREFIX}-{file_id[len(GENERATED_PREFIX) :] or 'input'}"
        )
    return None


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

    @classmethod
    def uploaded(
        cls,
        *,
        id: str,
        tenant: str,
        display_name: str,
        mime_type: str,
        size_bytes: int,
        sha256: str,
        blob_key: str,
        now: float,
        retention_s: float | None,
    ) -> File:
        """A user's file, ACTIVE from ``now``; it expires ``retention_s`` later (None: never)."""
        return cls(
            id=id,
            tenant=tenant,
            display_name=display_name,
            mime_type=mime_type,
            size_bytes=size_bytes,
            sha256=sha256,
            blob_key=blob_key,
            source=FileSource.UPLOADED,
            state=FileState.ACTIVE,
            create_time=now,
            update_time=now,
            expire_time=_expiry(now, retention_s),
        )

    @classmethod
    def generated(
        cls,
        *,
        id: str,
        tenant: str,
        display_name: str,
        size_bytes: int,
        sha256: str,
        blob_key: str,
        now: float,
        retention_s: float | None,
        mime_type: str = "application/jsonl",
    ) -> File:
        """A file Overnight wrote (a batch's responses), ACTIVE and downloadable from ``now``."""
        return cls(
            id=id,
            tenant=tenant,
            display_name=display_name,
            mime_type=mime_type,
            size_bytes=size_bytes,
            sha256=sha256,
            blob_key=blob_key,
            source=FileSource.GENERATED,
            state=FileState.ACTIVE,
            create_time=now,
            update_time=now,
            expire_time=_expiry(now, retention_s),
        )

    @property
    def name(self) -> str:
        return f"files/{self.id}"


def _expiry(now: float, retention_s: float | None) -> float | None:
    return None if retention_s is None else now + retention_s
