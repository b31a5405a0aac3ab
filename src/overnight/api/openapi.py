"""The OpenAPI document: what each route takes and answers, including its errors.

The routes parse their bodies themselves (proto3 JSON: camelCase and snake_case alike),
so FastAPI cannot infer the bodies; they are described here as JSON Schemas and named
by each route (``json_body``, ``answers``). Every operation also gets the Google-style
error responses and the API-key schemes (``x-goog-api-key`` header or ``?key=``). The
document feeds fuzzing (``tests/integration/test_openapi_fuzz.py``), so it must be
exact: a response it does not describe is a failure there.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(properties: Schema, required: list[str] | None = None, **extra: Any) -> Schema:
    schema: Schema = {"type": "object", "properties": properties, **extra}
    if required:
        schema["required"] = required
    return schema


_STRING: Schema = {"type": "string"}
_INT64: Schema = {"type": "string", "pattern": "^[0-9]+$", "description": "int64 as a string"}
_TIME: Schema = {"type": "string", "description": "RFC 3339, UTC (Z)"}
_STRINGS: Schema = {"type": "object", "additionalProperties": {"type": "string"}}

SCHEMAS: dict[str, Schema] = {
    "Status": _obj(
        {
            "error": _obj(
                {
                    "code": {"type": "integer"},
                    "message": _STRING,
                    "status": _STRING,
                    "details": {"type": "array"},
                },
                ["code", "message", "status"],
            )
        },
        ["error"],
        description="Google-style error: the HTTP code, a message naming the fix, a status.",
    ),
    "Part": _obj(
        {
            "text": _STRING,
            "inlineData": _obj({"mimeType": _STRING, "data": _STRING}),
            "fileData": _obj({"mimeType": _STRING, "fileUri": _STRING}),
        },
        description="One datum; snake_case spellings (inline_data, mime_type …) work too.",
    ),
    "Content": _obj(
        {
            "role": {"type": "string", "enum": ["user", "model"]},
            "parts": {"type": "array", "items": ref("Part")},
        },
        ["parts"],
    ),
    "GenerateContentRequest": _obj(
        {
            "contents": {"type": "array", "items": ref("Content"), "minItems": 1},
            "systemInstruction": ref("Content"),
            "generationConfig": {"type": "object"},
            "safetySettings": {"type": "array", "items": {"type": "object"}},
            "tools": {"type": "array", "items": {"type": "object"}},
            "toolConfig": {"type": "object"},
        },
        ["contents"],
    ),
    "EmbedContentRequest": _obj(
        {
            "model": _STRING,
            "content": ref("Content"),
            "taskType": _STRING,
            "title": _STRING,
            "outputDimensionality": {"type": "integer", "minimum": 1},
        },
        ["content"],
    ),
    "BatchEmbedContentsRequest": _obj(
        {"requests": {"type": "array", "items": ref("EmbedContentRequest"), "minItems": 1}},
        ["requests"],
        additionalProperties=False,
    ),
    "CountTokensRequest": _obj(
        {
            "contents": {"type": "array", "items": ref("Content")},
            "generateContentRequest": ref("GenerateContentRequest"),
        },
        additionalProperties=False,
        description="contents, or a whole generateContentRequest.",
    ),
    "InlinedRequest": _obj(
        {"request": {"type": "object"}, "metadata": _STRINGS},
        ["request"],
        description="request: a GenerateContentRequest or an EmbedContentRequest.",
    ),
    "BatchCreateRequest": _obj(
        {
            "batch": _obj(
                {
                    "displayName": _STRING,
                    "inputConfig": {
                        "oneOf": [
                            _obj(
                                {
                                    "requests": _obj(
                                        {
                                            "requests": {
                                                "type": "array",
                                                "items": ref("InlinedRequest"),
                                                "minItems": 1,
                                            }
                                        },
                                        ["requests"],
                                    )
                                },
                                ["requests"],
                            ),
                            _obj({"fileName": _STRING}, ["fileName"]),
                        ]
                    },
                },
                ["inputConfig"],
            )
        },
        ["batch"],
        description="Inline requests (the whole body at most server.max_inline_bytes) or "
        "an uploaded JSONL file. input_config, display_name and file_name work too.",
    ),
    "UploadStartRequest": _obj(
        {
            "file": _obj(
                {
                    "name": {"type": "string", "description": "files/ID, to choose the id"},
                    "displayName": _STRING,
                    "mimeType": _STRING,
                    "sizeBytes": {"type": "integer", "minimum": 0},
                }
            )
        },
        description="The SDK sends snake_case (display_name, mime_type, size_bytes).",
    ),
    "Operation": _obj(
        {
            "name": _STRING,
            "metadata": _obj(
                {
                    "@type": _STRING,
                    "name": _STRING,
                    "model": _STRING,
                    "displayName": _STRING,
                    "state": _STRING,
                    "createTime": _TIME,
                    "updateTime": _TIME,
                    "endTime": _TIME,
                    "batchStats": {"type": "object", "additionalProperties": _INT64},
                    "output": {"type": "object"},
                },
                ["@type", "name", "model", "state", "createTime", "updateTime", "batchStats"],
            ),
            "done": {"type": "boolean"},
            "response": {"type": "object"},
            "error": _obj({"code": {"type": "integer"}, "message": _STRING}),
        },
        ["name", "metadata"],
        description="A batch, as Gemini's long-running Operation.",
    ),
    "ListOperationsResponse": _obj(
        {"operations": {"type": "array", "items": ref("Operation")}, "nextPageToken": _STRING},
        ["operations"],
        description="Inline batches' results are left out; get a batch to read them.",
    ),
    "File": _obj(
        {
            "name": _STRING,
            "displayName": _STRING,
            "mimeType": _STRING,
            "sizeBytes": _INT64,
            "createTime": _TIME,
            "updateTime": _TIME,
            "expirationTime": _TIME,
            "sha256Hash": {
                "type": "string",
                "format": "byte",
                "description": "base64 of the raw SHA-256 digest",
            },
            "uri": _STRING,
            "downloadUri": _STRING,
            "state": _STRING,
            "source": _STRING,
        },
        ["name", "mimeType", "sizeBytes", "createTime", "uri", "state", "source"],
    ),
    "ListFilesResponse": _obj(
        {"files": {"type": "array", "items": ref("File")}, "nextPageToken": _STRING},
        ["files"],
    ),
    "Model": _obj(
        {
            "name": _STRING,
            "baseModelId": _STRING,
            "version": _STRING,
            "displayName": _STRING,
            "description": _STRING,
            "inputTokenLimit": {"type": "integer"},
            "outputTokenLimit": {"type": "integer"},
            "supportedGenerationMethods": {"type": "array", "items": _STRING},
        },
        ["name", "supportedGenerationMethods"],
    ),
    "ListModelsResponse": _obj(
        {"models": {"type": "array", "items": ref("Model")}, "nextPageToken": _STRING},
        ["models"],
    ),
    "GenerateContentResponse": _obj(
        {
            "candidates": {"type": "array", "items": {"type": "object"}},
            "usageMetadata": {"type": "object"},
            "modelVersion": _STRING,
            "responseId": _STRING,
        },
        ["candidates"],
    ),
    "ContentEmbedding": _obj(
        {"values": {"type": "array", "items": {"type": "number"}}}, ["values"]
    ),
    "EmbedContentResponse": _obj({"embedding": ref("ContentEmbedding")}, ["embedding"]),
    "BatchEmbedContentsResponse": _obj(
        {"embeddings": {"type": "array", "items": ref("ContentEmbedding")}}, ["embeddings"]
    ),
    "CountTokensResponse": _obj({"totalTokens": {"type": "integer"}}, ["totalTokens"]),
    "Empty": _obj({}, description="{} (the SDK needs a JSON body with HTTP 200)"),
}

_ERRORS = {
    "400": "INVALID_ARGUMENT or FAILED_PRECONDITION: the message names the field or the fix",
    "401": "UNAUTHENTICATED: this server has keys and the request's is missing or wrong",
    "403": "PERMISSION_DENIED: a foreign Host (server.allowed_hosts) or a cross-origin request",
    "404": "NOT_FOUND: no such resource (or another tenant's), model, API version or path",
    "413": "the body is over server.max_request_bytes (upload chunks: server.max_upload_bytes)",
    "500": "INTERNAL",
    "503": "UNAVAILABLE: the store or a backend is down",
}
_WRITE_ERRORS = {
    "409": "ALREADY_EXISTS: the file name asked for is taken",
    "415": "the body is not declared Content-Type: application/json",
    "507": "RESOURCE_EXHAUSTED: the disk under the data dir is full",
}
_WRITE_METHODS = {"post", "put", "patch"}

SECURITY_SCHEMES = {
    "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "x-goog-api-key"},
    "apiKeyQuery": {"type": "apiKey", "in": "query", "name": "key"},
}


def json_body(schema: str, description: str = "") -> dict[str, Any]:
    """``openapi_extra`` for a route that reads a JSON body of the named schema."""
    return {
        "requestBody": {
            "required": True,
            "description": description or f"A {schema}.",
            "content": {"application/json": {"schema": ref(schema)}},
        }
    }


def answers(schema: str, media_type: str = "application/json") -> dict[int | str, Any]:
    """``responses`` for a route whose 200 answer has the named schema."""
    return {200: {"description": "OK", "content": {media_type: {"schema": ref(schema)}}}}


def header(name: str, description: str, schema: Schema | None = None) -> Schema:
    return {"name": name, "in": "header", "description": description, "schema": schema or _STRING}


def query(name: str, description: str) -> Schema:
    return {"name": name, "in": "query", "description": description, "schema": _STRING}


def complete(document: dict[str, Any]) -> dict[str, Any]:
    """Add the shared schemas, the key schemes and every operation's error responses."""
    components = document.setdefault("components", {})
    components.setdefault("schemas", {}).update(SCHEMAS)
    components["securitySchemes"] = SECURITY_SCHEMES
    # Either scheme, or none at all on a keyless server (single user).
    document["security"] = [{"apiKeyHeader": []}, {"apiKeyQuery": []}, {}]
    error = {"application/json": {"schema": ref("Status")}}
    for item in document.get("paths", {}).values():
        for method, operation in item.items():
            codes = dict(_ERRORS, **(_WRITE_ERRORS if method in _WRITE_METHODS else {}))
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)  # validation errors are answered 400
            for code, text in codes.items():
                responses.setdefault(code, {"description": text, "content": error})
    return document


def install_openapi(app: FastAPI) -> None:
    """Serve the completed document at ``/openapi.json``."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    description=app.description,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
