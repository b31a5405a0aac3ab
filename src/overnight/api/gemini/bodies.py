"""The JSON bodies the Gemini routes read, as shapes: the names each may hold.

Each route checks its body with ``check_known`` before it reads a field, so an unknown
name (a typo such as ``dispalyName``) is refused with Gemini's own 400
INVALID_ARGUMENT, ``Invalid JSON payload received. Unknown name "dispalyName" at
'batch': Cannot find field.``, instead of being silently ignored. The names are the
fields of the Gemini API's messages, in camelCase and snake_case, output-only fields
included (proto3 JSON parsing knows them, and the routes ignore them, as Google
does). The requests inside a body take their shape from the canonical request models,
so a field added there is known here at once.
"""

from __future__ import annotations

from overnight.domain.batches import BatchKind
from overnight.domain.fields import Shape, model_shape
from overnight.domain.requests import Content, EmbedRequest, GenerateRequest

GENERATE_REQUEST = model_shape(GenerateRequest)
EMBED_REQUEST = model_shape(EmbedRequest)

# GenerateContentBatch / EmbedContentBatch, webhookConfig included (spec §4.2, §5).
_WEBHOOK_CONFIG = Shape.of(uris=None, user_metadata=None)
_BATCH_FIELDS = dict.fromkeys(
    (
        "name",
        "model",
        "display_name",
        "priority",
        "state",
        "create_time",
        "update_time",
        "end_time",
        "batch_stats",
        "output",
    )
)


def _batch_create(request: Shape) -> Shape:
    inlined = Shape.of(request=request, metadata=None)
    input_config = Shape.of(file_name=None, requests=Shape.of(requests=inlined))
    batch = Shape.of(**_BATCH_FIELDS, input_config=input_config, webhook_config=_WEBHOOK_CONFIG)
    return Shape.of(batch=batch)


BATCH_CREATE = {
    BatchKind.GENERATE: _batch_create(GENERATE_REQUEST),
    BatchKind.EMBED: _batch_create(EMBED_REQUEST),
}

# batches.cancel: the name is in the path; the SDK sends an empty body.
CANCEL = Shape.of(name=None)

# The upload start body, {"file": File} (spec §3.1, §3.3).
UPLOAD_START = Shape.of(
    file=Shape.of(
        **dict.fromkeys(
            (
                "name",
                "display_name",
                "mime_type",
                "size_bytes",
                "create_time",
                "update_time",
                "expiration_time",
                "sha256_hash",
                "uri",
                "download_uri",
                "state",
                "source",
                "video_metadata",
                "error",
            )
        )
    )
)

# Synchronous calls (spec §11.3). generateContent and embedContent bodies are the
# request models themselves, which refuse unknown names as they parse.
BATCH_EMBED_CONTENTS = Shape.of(requests=EMBED_REQUEST)
COUNT_TOKENS = Shape.of(
    model=None, contents=model_shape(Content), generate_content_request=GENERATE_REQUEST
)

# Webhooks (snake_case on the wire, as the SDK's webhook types): the Webhook's fields,
# and ``displayName``, which the webhook routes take for ``name``.
_WEBHOOK_FIELDS = (
    "id",
    "name",
    "uri",
    "subscribed_events",
    "state",
    "create_time",
    "update_time",
    "signing_secrets",
    "new_signing_secret",
)
WEBHOOK = Shape({**Shape.of(**dict.fromkeys(_WEBHOOK_FIELDS)).fields, "displayName": None})
ROTATE_SIGNING_SECRET = Shape.of(revocation_behavior=None)
