"""A model's default generation settings, applied to the fields a request leaves unset.

Each configured model has defaults (``temperature``, ``topP``, ``topK``,
``maxOutputTokens``, ``presencePenalty``, ``frequencyPenalty``; see
``config.generation``), expressed as a ``GenerationConfig`` holding only the fields it
sets. ``apply_defaults`` fills them in field by field: a field the request sets, even
to 0, is the request's own. It runs where a request meets its model, after the request
was checked against the model's capabilities: the shard runner (batch lines) and the
synchronous calls.

A batch line that will sample (temperature above 0) and sets no ``seed`` gets one
derived from its key and its request (``derived_seed``), so the same input file gives
the same answers when it runs again (``overnight run``, a retried shard), and two lines
with the same prompt but different keys are still two draws. Synchronous calls pass
no seed source and draw fresh each time, as Gemini does.
"""

from __future__ import annotations

import hashlib

from overnight.domain.requests import GenerateRequest, GenerationConfig

# The generationConfig fields a model's defaults may set.
DEFAULTED_FIELDS = (
    "temperature",
    "top_p",
    "top_k",
    "max_output_tokens",
    "presence_penalty",
    "frequency_penalty",
)


def apply_defaults(
    request: GenerateRequest, defaults: GenerationConfig, seed_source: str | None = None
) -> GenerateRequest:
    """``request`` with each field it leaves unset taken from ``defaults``.

    With ``seed_source`` (a batch line's key), a request that samples without a seed
    gets ``derived_seed(seed_source, request)``. Returns ``request`` itself when
    nothing changes.
    """
    config = request.config
    updates = {
        name: getattr(defaults, name)
        for name in DEFAULTED_FIELDS
        if getattr(config, name) is None and getattr(defaults, name) is not None
    }
    temperature = updates.get("temperature", config.temperature) or 0.0
    if seed_source is not None and config.seed is None and temperature > 0:
        updates["seed"] = derived_seed(seed_source, request)
    if not updates:
        return request
    merged = config.model_copy(update=updates)
    return request.model_copy(update={"generation_config": merged})


def derived_seed(seed_source: str, request: GenerateRequest) -> int:
    """A seed in [0, 2**31) from a line's key and its request as the user wrote it."""
    digest = hashlib.sha256(seed_source.encode("utf-8"))
    digest.update(b"\0")
    digest.update(request.model_dump_json(exclude_unset=True).encode("utf-8"))
    return int.from_bytes(digest.digest()[:4], "big") & 0x7FFF_FFFF
