"""The blob key layout: where each kind of bytes lives. Pure: no I/O.

    files/<tenant>/<file id>                    a file imported in one piece
    files/<tenant>/<file id>.<session>          a file made by a resumable upload
    uploads/<session>.part                      an upload's staged bytes, until finalize
    batches/<batch id>/input.jsonl              an inline batch's requests, as JSONL
    batches/<batch id>/shards/<seq>-<lease>.jsonl   one shard's results
    batches/<batch id>/responses.jsonl          a batch's responses file

Everything a batch owns is under ``batches/<batch id>/`` (see ``batch_prefix``), so
deleting that prefix removes it all, writer temporaries included. A user's input
file lives under ``files/`` and is never under a batch's prefix.
"""

from __future__ import annotations

UPLOAD_KEY_SESSION_CHARS = 16


def file_key(tenant: str, file_id: str) -> str:
    """A file whose bytes were written in one piece (``FileService.create_from_chunks``)."""
    return f"files/{tenant}/{file_id}"


def uploaded_file_key(tenant: str, file_id: str, session_id: str) -> str:
    """Where an upload session's finalize puts its bytes: a key of the session's own,
    so that no two uploads (even of one name, racing) ever write, or remove, one blob."""
    return f"{file_key(tenant, file_id)}.{session_id[:UPLOAD_KEY_SESSION_CHARS]}"


def upload_staging_key(session_id: str) -> str:
    """The staged bytes of an upload session, appended chunk by chunk."""
    return f"uploads/{session_id}.part"


def batch_prefix(batch_id: str) -> str:
    """The prefix of every blob a batch owns (ends in '/': ``BlobStore.delete`` takes it)."""
    return f"batches/{batch_id}/"


def inline_input_key(batch_id: str) -> str:
    """An inline batch's requests, written out as JSONL at create."""
    return f"{batch_prefix(batch_id)}input.jsonl"


def shards_prefix(batch_id: str) -> str:
    """The prefix of a batch's shard outputs (dropped once the responses file holds them)."""
    return f"{batch_prefix(batch_id)}shards/"


def shard_output_key(batch_id: str, seq: int, lease_token: str) -> str:
    """One shard's results. The lease token in the name means a stale worker can never
    overwrite the output that a commit recorded."""
    return f"{shards_prefix(batch_id)}{seq:07d}-{lease_token}.jsonl"


def responses_key(batch_id: str) -> str:
    """A batch's responses file: the shard outputs concatenated in input order."""
    return f"{batch_prefix(batch_id)}responses.jsonl"
