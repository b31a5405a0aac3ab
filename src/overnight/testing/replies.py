"""What the fake upstream answers: routes, replies and error bodies.

Pure functions of a request (and the :class:`UpstreamConfig`): the text is an echo of the
last user turn, a JSON schema gets a minimal valid instance (:func:`minimal_instance`),
embeddings are unit vectors derived from a hash of the text. The wire formats are OpenAI
(:class:`OpenAI`) and Gemini (:class:`Gemini`). :mod:`overnight.testing.server` serves them.
"""

from __future__ import annotations

import hashlib
import math
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from overnight.testing.config import UpstreamConfig
from overnight.testing.tool_replies import gemini_call, openai_call, parameters_of

_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_OPENAI_TYPE = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("server_error", "service_unavailable"),
}


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _words(text: str) -> int:
    return len(text.split())


def _echo(text: str, index: int, max_tokens: int | None, stops: Sequence[str]) -> tuple[str, bool]:
    """The reply text for candidate ``index`` and whether ``max_tokens`` cut it."""
    reply = ("echo: " if index == 0 else f"echo {index}: ") + text
    words = reply.split()
    truncated = max_tokens is not None and len(words) > max_tokens
    if truncated:
        reply = " ".join(words[:max_tokens])
    cuts = [reply.find(stop) for stop in stops if stop and stop in reply]
    if cuts:
        return reply[: min(cuts)], False
    return reply, truncated


def minimal_instance(schema: Any, root: Any = None, depth: int = 0) -> Any:
    """A small value valid against a JSON schema (or a Gemini ``responseSchema``).

    Objects get their required properties only; arrays get ``minItems`` items; strings
    ``minLength`` letters; numbers their minimum or 0; enums and unions their first
    choice. Local ``$ref`` (``#/$defs/...``) are followed.
    """
    root = schema if root is None else root
    if not isinstance(schema, dict) or depth > 32:
        return None
    if isinstance(schema.get("$ref"), str):
        target: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return minimal_instance(target, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return minimal_instance(schema[key][0], root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if str(k).lower() != "null"), "null")
    kind = str(kind).lower() if kind else ("array" if "items" in schema else "object")
    if kind == "object":
        props = schema.get("properties") or {}
        return {
            name: minimal_instance(props.get(name, {}), root, depth + 1)
            for name in schema.get("required") or []
        }
    if kind == "array":
        return [minimal_instance(schema.get("items", {}), root, depth + 1)] * int(
            schema.get("minItems") or 0
        )
    if kind == "string":
        formats = {"date": "2000-01-01", "date-time": "2000-01-01T00:00:00Z"}
        return formats.get(schema.get("format", ""), "a" * int(schema.get("minLength") or 0))
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        if low is None:
            return 0
        value = low + (1 if "minimum" not in schema else 0)
        return math.ceil(value) if kind == "integer" else value
    if kind == "boolean":
        return False
    return None


def _embedding(text: str, dimensions: int) -> list[float]:
    raw = hashlib.shake_256(text.encode()).digest(2 * dimensions)
    values = [(v - 32767.5) / 32767.5 for v in struct.unpack(f"<{dimensions}H", raw)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def _openai_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def _gemini_text(content: Any) -> str:
    parts = content.get("parts", []) if isinstance(content, dict) else []
    return " ".join(str(p["text"]) for p in parts if isinstance(p, dict) and "text" in p)


def _positive_int(body: Mapping[str, Any], *names: str) -> int | None:
    for name in names:
        value = body.get(name)
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise HttpError(400, f"{name} must be a positive integer, got {value!r}")
            return value
    return None


def _stops(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(s) for s in value]


class OpenAI:
    """Request parsing and reply building in the OpenAI wire format."""

    @staticmethod
    def prompt_tokens(body: Mapping[str, Any]) -> int:
        return sum(_words(_openai_text(m.get("content"))) for m in body.get("messages") or [])

    @staticmethod
    def chat(body: Mapping[str, Any], model: str, serial: int) -> dict[str, Any]:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise HttpError(400, "messages must be a non-empty list")
        max_tokens = _positive_int(body, "max_completion_tokens", "max_tokens")
        n = _positive_int(body, "n") or 1
        user = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        text = _openai_text(user[-1].get("content")) if user else ""
        fmt = body.get("response_format") or {}
        choices: list[dict[str, Any]] = []
        texts: list[str] = []
        call = openai_call(body, text)
        for index in range(n):
            if call is not None:
                arguments = orjson.dumps(minimal_instance(parameters_of(call))).decode()
                tool_call = {"name": call.get("name"), "arguments": arguments}
                message = {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": f"call_{serial}_{index}", "type": "function", "function": tool_call}
                    ],
                }
                texts.append("")
                choices.append({"index": index, "message": message, "finish_reason": "tool_calls"})
                continue
            if fmt.get("type") in ("json_schema", "json_object"):
                schema = (fmt.get("json_schema") or {}).get("schema")
                reply, cut = (
                    orjson.dumps(minimal_instance(schema) if schema else {}).decode(),
                    False,
                )
            else:
                reply, cut = _echo(text, index, max_tokens, _stops(body.get("stop")))
            texts.append(reply)
            choices.append(
                {
                    "index": index,
                    "message": {"role": "assistant", "content": reply},
                    "finish_reason": "length" if cut else "stop",
                    "logprobs": None,
                }
            )
        prompt = OpenAI.prompt_tokens(body)
        completion = sum(_words(t) for t in texts)
        return {
            "id": f"chatcmpl-fake-{serial}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fake",
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }

    @staticmethod
    def inputs(body: Mapping[str, Any]) -> list[str]:
        value = body.get("input")
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return list(value)
        raise HttpError(400, "input must be a string or a non-empty list of strings")

    @staticmethod
    def embeddings(body: Mapping[str, Any], model: str, config: UpstreamConfig) -> dict[str, Any]:
        inputs = OpenAI.inputs(body)
        limit = config.max_embedding_inputs
        if limit is not None and len(inputs) > limit:
            raise HttpError(400, f"at most {limit} inputs per call, got {len(inputs)}")
        dims = _positive_int(body, "dimensions") or config.embedding_dimensions
        tokens = sum(_words(t) for t in inputs)
        return {
            "object": "list",
            "model": model,
            "data": [
                {"object": "embedding", "index": i, "embedding": _embedding(t, dims)}
                for i, t in enumerate(inputs)
            ],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }


class Gemini:
    """Request parsing and reply building in the Gemini wire format."""

    @staticmethod
    def prompt_tokens(body: Mapping[str, Any]) -> int:
        body = body.get("generateContentRequest") or body
        contents = body.get("contents") or []
        words = sum(_words(_gemini_text(c)) for c in contents if isinstance(c, dict))
        return words + _words(_gemini_text(body.get("systemInstruction")))

    @staticmethod
    def generate(body: Mapping[str, Any], model: str, serial: int) -> dict[str, Any]:
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            raise HttpError(400, "contents must be a non-empty list")
        config = body.get("generationConfig") or {}
        max_tokens = _positive_int(config, "maxOutputTokens")
        count = _positive_int(config, "candidateCount") or 1
        user = [c for c in contents if isinstance(c, dict) and c.get("role", "user") == "user"]
        text = _gemini_text(user[-1]) if user else ""
        schema = config.get("responseJsonSchema") or config.get("responseSchema")
        candidates: list[dict[str, Any]] = []
        texts: list[str] = []
        call = gemini_call(body, text)
        for index in range(count):
            if call is not None:
                args = minimal_instance(parameters_of(call))
                part = {"functionCall": {"name": call.get("name"), "args": args}}
                texts.append("")
                candidates.append(
                    {
                        "content": {"role": "model", "parts": [part]},
                        "finishReason": "STOP",
                        "index": index,
                    }
                )
                continue
            if config.get("responseMimeType") == "application/json":
                reply, cut = (
                    orjson.dumps(minimal_instance(schema) if schema else {}).decode(),
                    False,
                )
            else:
                reply, cut = _echo(text, index, max_tokens, _stops(config.get("stopSequences")))
            texts.append(reply)
            candidates.append(
                {
                    "content": {"role": "model", "parts": [{"text": reply}]},
                    "finishReason": "MAX_TOKENS" if cut else "STOP",
                    "index": index,
                }
            )
        prompt = Gemini.prompt_tokens(body)
        output = sum(_words(t) for t in texts)
        return {
            "candidates": candidates,
            "usageMetadata": {
                "promptTokenCount": prompt,
                "candidatesTokenCount": output,
                "totalTokenCount": prompt + output,
            },
            "modelVersion": model,
            "responseId": f"fake-{serial}",
        }

    @staticmethod
    def embed_one(body: Mapping[str, Any], config: UpstreamConfig) -> dict[str, Any]:
        if not isinstance(body.get("content"), dict):
            raise HttpError(400, "content must be an object with parts")
        dims = _positive_int(body, "outputDimensionality") or config.embedding_dimensions
        return {"values": _embedding(_gemini_text(body["content"]), dims)}

    @staticmethod
    def embed_requests(body: Mapping[str, Any]) -> list[Any]:
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            raise HttpError(400, "requests must be a non-empty list")
        return requests

    @staticmethod
    def embed_tokens(kind: str, body: Mapping[str, Any]) -> int:
        items = (body.get("requests") or []) if kind == "batchEmbedContents" else [body]
        return sum(_words(_gemini_text(r.get("content"))) for r in items if isinstance(r, dict))


# --------------------------------------------------------------------------- routes


@dataclass
class Route:
    api: str  # "openai" or "gemini"
    endpoint: str
    model: str | None


def find_route(method: str, path: str) -> Route | None:
    if path in ("/v1/chat/completions", "/chat/completions") and method == "POST":
        return Route("openai", "chat.completions", None)
    if path in ("/v1/embeddings", "/embeddings") and method == "POST":
        return Route("openai", "embeddings", None)
    if path in ("/v1/models", "/models") and method == "GET":
        return Route("openai", "models", None)
    for prefix in ("/v1beta/models/", "/v1/models/"):
        if path.startswith(prefix) and ":" in path and method == "POST":
            model, _, action = path[len(prefix) :].rpartition(":")
            if action in ("generateContent", "embedContent", "batchEmbedContents", "countTokens"):
                return Route("gemini", action, model)
    return None


def error_body(api: str, status: int, message: str) -> dict[str, Any]:
    if api == "gemini":
        return {
            "error": {
                "code": status,
                "message": message,
                "status": _GOOGLE_STATUS.get(status, "UNKNOWN"),
            }
        }
    kind, code = _OPENAI_TYPE.get(status, ("server_error" if status >= 500 else "error", None))
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def request_tokens(route: Route, body: Mapping[str, Any]) -> int:
    if route.endpoint == "chat.completions":
        prompt = OpenAI.prompt_tokens(body)
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        return prompt + (limit if isinstance(limit, int) else 0)
    if route.endpoint == "generateContent":
        limit = (body.get("generationConfig") or {}).get("maxOutputTokens")
        return Gemini.prompt_tokens(body) + (limit if isinstance(limit, int) else 0)
    if route.endpoint == "embeddings":
        value = body.get("input")
        texts = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        return sum(_words(t) for t in texts if isinstance(t, str))
    if route.endpoint in ("embedContent", "batchEmbedContents"):
        return Gemini.embed_tokens(route.endpoint, body)
    return 0


def build_reply(
    route: Route,
    model: Any,
    body: Mapping[str, Any],
    config: UpstreamConfig,
    next_serial: Callable[[], int],
) -> Any:
    """The 200 reply to a model API request; raises :class:`HttpError` for a bad one.

    ``next_serial`` is called once per reply that needs an id (not for ``models``).
    """
    models = config.models
    if route.endpoint == "models":
        names = models if models is not None else ("fake-model",)
        return {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": 0, "owned_by": "overnight"} for m in names
            ],
        }
    if not isinstance(model, str) or not model:
        raise HttpError(400, "model is required")
    if models is not None and model not in models:
        raise HttpError(404, f"model {model!r} not found; served: {list(models)}")
    serial = next_serial()
    if route.endpoint == "chat.completions":
        return OpenAI.chat(body, model, serial)
    if route.endpoint == "embeddings":
        return OpenAI.embeddings(body, model, config)
    if route.endpoint == "generateContent":
        return Gemini.generate(body, model, serial)
    if route.endpoint == "embedContent":
        return {"embedding": Gemini.embed_one(body, config)}
    if route.endpoint == "batchEmbedContents":
        requests = Gemini.embed_requests(body)
        limit = config.max_embedding_inputs
        if limit is not None and len(requests) > limit:
            raise HttpError(400, f"at most {limit} requests per call, got {len(requests)}")
        return {"embeddings": [Gemini.embed_one(r, config) for r in requests]}
    return {"totalTokens": Gemini.prompt_tokens(body)}  # countTokens
