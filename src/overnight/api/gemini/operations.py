"""A batch as Gemini's long-running Operation (spec §4.4, §5.4, §7, §8).

The SDK reads only ``name`` and ``metadata.*``; REST users and the docs' curl examples
read ``done``, ``response`` and ``error`` too, so both are filled in. ``output`` is
present once the engine has finalized the batch, which includes the partial output of
a cancelled, expired or failed batch that had been admitted.
"""

from __future__ import annotations

from typing import Any

from overnight.api.wire import int64, timestamp
from overnight.domain.batches import Batch, BatchKind, BatchState

_TYPE_PREFIX = "type.googleapis.com/google.ai.generativelanguage.v1main."
_BATCH_TYPE = {BatchKind.GENERATE: "GenerateContentBatch", BatchKind.EMBED: "EmbedContentBatch"}

# google.rpc.Status of the Operation for the terminal states that are not a success.
_OPERATION_ERROR = {
    BatchState.FAILED: (13, "the batch failed"),
    BatchState.CANCELLED: (1, "the batch was cancelled"),
    BatchState.EXPIRED: (4, "the batch expired before it finished"),
}

# Inline result items carry an HTTP-ish code (Google's inlined errors say 400, not 3).
_HTTP_CODE = {
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}


def batch_stats(batch: Batch) -> dict[str, str]:
    """``batchStats`` with int64 strings; zero counters are left out, as Google does."""
    counts = {
        "requestCount": batch.request_count,
        "successfulRequestCount": batch.succeeded_count,
        "failedRequestCount": batch.failed_count,
        "pendingRequestCount": 0 if batch.state.terminal else batch.pending_count,
    }
    return {field: int64(n) for field, n in counts.items() if n}


def inlined_item(line: dict[str, Any]) -> dict[str, Any]:
    """One responses-file line as an InlinedResponse: ``response`` or ``error``, plus metadata."""
    item: dict[str, Any] = {}
    if "response" in line:
        item["response"] = line["response"]
    else:
        error = line.get("error") or {}
        status = str(error.get("status", "UNKNOWN"))
        item["error"] = {
            "code": _HTTP_CODE.get(status, 500),
            "message": str(error.get("message", "")),
            "details": error.get("details") or [],
        }
    if line.get("metadata") is not None:
        item["metadata"] = line["metadata"]
    return item


def render_output(batch: Batch, inlined: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """``metadata.output``: inline batches answer inline, file batches with a responses file.

    Embedding batches use the same ``inlinedResponses`` key as the real API. The SDK
    moves those items to ``dest.inlined_embed_content_responses`` only if at least one
    item has ``response.embedding``; if every item is an error they stay in
    ``dest.inlined_responses`` (spec §8.4).
    """
    if not batch.output_file_id:
        return None
    if batch.inline:
        return {"inlinedResponses": {"inlinedResponses": inlined or []}}
    return {"responsesFile": f"files/{batch.output_file_id}"}


def render_listed(batch: Batch) -> dict[str, Any]:
    """The Operation as ``batches.list`` shows it: an inline batch's results are left out
    (``output`` and the ``response`` mirror), a file batch keeps its ``responsesFile``."""
    operation = render_operation(batch)
    if batch.inline:
        operation["metadata"].pop("output", None)
        operation.pop("response", None)
    return operation


def render_operation(batch: Batch, inlined: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The Operation for ``batch``; ``inlined`` holds an inline batch's result items."""
    type_name = _BATCH_TYPE[batch.kind]
    metadata: dict[str, Any] = {
        "@type": _TYPE_PREFIX + type_name,
        "name": batch.name,
        "model": batch.model,
        "displayName": batch.display_name,
        "createTime": timestamp(batch.create_time),
        "updateTime": timestamp(batch.update_time),
        "state": batch.state.wire,
        "batchStats": batch_stats(batch),
    }
    if batch.end_time is not None:
        metadata["endTime"] = timestamp(batch.end_time)
    output = render_output(batch, inlined)
    if output is not None:
        metadata["output"] = output
    operation: dict[str, Any] = {"name": batch.name, "metadata": metadata}
    if batch.state.terminal:
        operation["done"] = True
        if batch.state is BatchState.SUCCEEDED:
            operation["response"] = {"@type": f"{_TYPE_PREFIX}{type_name}Output", **(output or {})}
        else:
            code, default = _OPERATION_ERROR[batch.state]
            operation["error"] = {"code": code, "message": batch.error or default, "details": []}
    return operation
