"""``[models.NAME.generation]``, and the default generation settings each model ends up with.

A request's generationConfig field that is unset takes, in order:

1. the model's ``[models.NAME.generation]`` table in ``overnight.toml``; for
   ``maxOutputTokens``, its ``max_output_tokens``;
2. for local models (transformers, vLLM), what the weights recommend
   (``config.recommended``): their ``generation_config.json`` or GGUF sampling
   metadata, and for the bundled SmolLM2 the settings its package samples with;
3. nothing: the backend's own behaviour for an unset field (local models decode
   greedily without a temperature; an upstream server applies its own defaults).

Upstream backends (openai, gemini) pass the user's settings through unchanged unless
the model's table in ``overnight.toml`` sets defaults. ``models.get`` publishes the
result (``temperature``, ``topP``, ``topK``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field

from overnight.backends import registry
from overnight.config.base import Section
from overnight.config.recommended import recommended_generation
from overnight.domain.batches import BatchKind
from overnight.domain.requests import GenerationConfig

if TYPE_CHECKING:
    from overnight.config.models import ModelSettings


class GenerationDefaults(Section):
    """Default generationConfig values for requests that set none (field by field). Unset
    here: what the model's own files recommend (local models), else the backend's default."""

    temperature: float | None = Field(
        None,
        ge=0,
        le=2,
        description="Default temperature; 0 decodes greedily. Local models: unset means the "
        "weights' recommendation (bundled SmolLM2: 0.2), else greedy.",
    )
    top_p: float | None = Field(
        None, ge=0, le=1, description="Default topP (nucleus sampling); 1 turns it off."
    )
    top_k: int | None = Field(None, ge=0, description="Default topK; 0 turns it off.")
    presence_penalty: float | None = Field(
        None,
        ge=-2,
        le=2,
        description="Default presencePenalty: subtracted from the logit of every token the "
        "answer already contains.",
    )
    frequency_penalty: float | None = Field(
        None,
        ge=-2,
        le=2,
        description="Default frequencyPenalty: subtracted from a token's logit once per time "
        "the answer already contains it.",
    )


def generation_defaults(settings: ModelSettings) -> GenerationConfig:
    """The generationConfig values a request to this model gets for the fields it leaves
    unset, as a ``GenerationConfig`` holding only those (see the module docstring).

    Reading the weights' recommendation is cached per file, so this is cheap to call
    per request.
    """
    local = _local_generative(settings)
    values: dict[str, Any] = recommended_generation(settings.path) if local else {}
    values.update(settings.generation.model_dump(exclude_none=True))
    if local or "max_output_tokens" in settings.model_fields_set:
        values["max_output_tokens"] = settings.max_output_tokens
    return GenerationConfig(**values)


def _local_generative(settings: ModelSettings) -> bool:
    entry = registry.BACKENDS.get(settings.backend)
    if entry is None or not entry.local or BatchKind.GENERATE not in entry.kinds:
        return False
    return bool(settings.options.get("runner", "generate") == "generate")
