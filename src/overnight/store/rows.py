"""Conversions between table rows and domain records."""

from __future__ import annotations

from typing import Any

import orjson

from overnight.domain.batches import Batch, BatchKind, BatchState, Shard, ShardState, Usage
from overnight.domain.files import File, FileSource, FileState
from overnight.domain.uploads import Upload
from overnight.domain.webhooks import SigningSecret, Webhook, WebhookConfig, WebhookState


def file_values(file: File) -> dict[str, Any]:
    return {
        "id": file.id,
        "tenant": file.tenant,
        "display_name": file.display_name,
        "mime_type": file.mime_type,
        "size_bytes": file.size_bytes,
        "sha256": file.sha256,
        "blob_key": file.blob_key,
        "source": file.source.value,
        "state": file.state.value,
        "create_time": file.create_time,
        "update_time": file.update_time,
        "expire_time": file.expire_time,
    }


def to_file(row: Any) -> File:
    return File(
        id=row["id"],
        tenant=row["tenant"],
        display_name=row["display_name"],
        mime_type=row["mime_type"],
        size_bytes=int(row["size_bytes"]),
        sha256=row["sha256"],
        blob_key=row["blob_key"],
        source=FileSource(row["source"]),
        state=FileState(row["state"]),
        create_time=row["create_time"],
        update_time=row["update_time"],
        expire_time=row["expire_time"],
    )


def upload_values(upload: Upload) -> dict[str, Any]:
    return {
        "id": upload.id,
        "tenant": upload.tenant,
        "file_id": upload.file_id,
        "display_name": upload.display_name,
        "mime_type": upload.mime_type,
        "size_bytes": upload.size_bytes,
        "received": upload.received,
        "expire_time": upload.expire_time,
    }


def to_upload(row: Any) -> Upload:
    return Upload(
        id=row["id"],
        tenant=row["tenant"],
        file_id=row["file_id"],
        display_name=row["display_name"],
        mime_type=row["mime_type"],
        size_bytes=int(row["size_bytes"]),
        received=int(row["received"]),
        expire_time=row["expire_time"],
    )


def batch_values(batch: Batch) -> dict[str, Any]:
    return {
        "id": batch.id,
        "tenant": batch.tenant,
        "kind": batch.kind.value,
        "model": batch.model,
        "model_resolved": batch.model_resolved,
        "display_name": batch.display_name,
        "state": batch.state.value,
        "input_file_id": batch.input_file_id,
        "inline": batch.inline,
        "output_file_id": batch.output_file_id,
        "request_count": batch.request_count,
        "succeeded_count": batch.succeeded_count,
        "failed_count": batch.failed_count,
        "prompt_tokens": batch.usage.prompt_tokens,
        "candidates_tokens": batch.usage.candidates_tokens,
        "create_time": batch.create_time,
        "update_time": batch.update_time,
        "end_time": batch.end_time,
        "expire_time": batch.expire_time,
        "error": batch.error,
        "ref": batch.ref,
        "admitted": batch.admitted,
        "finalized": batch.finalized,
        "webhook_config": batch.webhook_config.to_json() if batch.webhook_config else None,
    }


def to_batch(row: Any) -> Batch:
    return Batch(
        id=row["id"],
        tenant=row["tenant"],
        kind=BatchKind(row["kind"]),
        model=row["model"],
        model_resolved=row["model_resolved"],
        display_name=row["display_name"],
        state=BatchState(row["state"]),
        input_file_id=row["input_file_id"],
        inline=bool(row["inline"]),
        output_file_id=row["output_file_id"],
        request_count=int(row["request_count"]),
        succeeded_count=int(row["succeeded_count"]),
        failed_count=int(row["failed_count"]),
        usage=Usage(int(row["prompt_tokens"]), int(row["candidates_tokens"])),
        create_time=row["create_time"],
        update_time=row["update_time"],
        end_time=row["end_time"],
        expire_time=row["expire_time"],
        error=row["error"],
        ref=row["ref"],
        admitted=bool(row["admitted"]),
        finalized=bool(row["finalized"]),
        webhook_config=WebhookConfig.from_json(row.get("webhook_config")),
    )


def to_shard(row: Any) -> Shard:
    return Shard(
        batch_id=row["batch_id"],
        seq=int(row["seq"]),
        byte_start=int(row["byte_start"]),
        byte_end=int(row["byte_end"]),
        first_line=int(row["first_line"]),
        request_count=int(row["request_count"]),
        state=ShardState(row["state"]),
        lease_owner=row["lease_owner"],
        lease_expires=row["lease_expires"],
        lease_token=row["lease_token"],
        attempts=int(row["attempts"]),
        output_blob=row["output_blob"],
    )


def secrets_json(secrets: tuple[SigningSecret, ...]) -> str:
    return orjson.dumps(
        [
            {"secret": s.secret, "create_time": s.create_time, "expire_time": s.expire_time}
            for s in secrets
        ]
    ).decode()


def webhook_values(webhook: Webhook) -> dict[str, Any]:
    return {
        "id": webhook.id,
        "tenant": webhook.tenant,
        "name": webhook.name,
        "uri": webhook.uri,
        "subscribed_events": orjson.dumps(list(webhook.subscribed_events)).decode(),
        "state": webhook.state.value,
        "secrets": secrets_json(webhook.secrets),
        "create_time": webhook.create_time,
        "update_time": webhook.update_time,
        "consecutive_failures": webhook.consecutive_failures,
        "failing_since": webhook.failing_since,
    }


def to_webhook(row: Any) -> Webhook:
    return Webhook(
        id=row["id"],
        tenant=row["tenant"],
        name=row["name"],
        uri=row["uri"],
        subscribed_events=tuple(orjson.loads(row["subscribed_events"])),
        state=WebhookState(row["state"]),
        secrets=tuple(
            SigningSecret(s["secret"], s["create_time"], s.get("expire_time"))
            for s in orjson.loads(row["secrets"])
        ),
        create_time=row["create_time"],
        update_time=row["update_time"],
        consecutive_failures=int(row["consecutive_failures"] or 0),
        failing_since=row["failing_since"],
    )
