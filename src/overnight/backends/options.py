"""The ``options`` table of each backend, as one typed pydantic model per backend.

``[models.NAME] options = {...}`` is backend-specific. Each backend's model below
forbids unknown keys and describes every field; ``backends.registry`` names the model
of each backend, ``config.ModelSettings`` checks a model's options against it when the
settings are read, the backend parses them again when it is built (settings made in
code skip the first check), and ``config_docs`` renders each model into
docs/configuration.md.

A bad option is reported with the model, the option and what is allowed, e.g.
``model 'm': options.thread: unknown transformers option (did you mean threads?);
known transformers options: threads, model_version``.

This module is imported by the configuration and by the API layer, so it stays light:
pydantic, the standard library and ``overnight.errors`` only.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from overnight.errors import ConfigError

AUTO: Literal["auto"] = "auto"


class OptionsError(ValueError):
    """A model's ``options`` table does not fit its backend; the message names the option."""


class BackendOptions(BaseModel):
    """Base of the option models: unknown keys are an error, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: ClassVar[str] = ""

    @classmethod
    def check(cls, options: Mapping[str, Any]) -> Self:
        """Validate an ``options`` table. Raises ``OptionsError`` naming each bad option."""
        try:
            return cls.model_validate(dict(options))
        except ValidationError as exc:
            raise OptionsError(cls._describe(exc)) from None

    @classmethod
    def parse(cls, model: str, options: Mapping[str, Any]) -> Self:
        """Validate model ``model``'s ``options``. Raises ``ConfigError`` naming the
        model, the option and what is allowed."""
        try:
            return cls.check(options)
        except OptionsError as exc:
            raise ConfigError(f"model {model!r}: {exc}") from None

    @classmethod
    def _describe(cls, exc: ValidationError) -> str:
        known = list(cls.model_fields)
        problems: list[str] = []
        unknown = False
        for err in exc.errors():
            key = ".".join(str(part) for part in err["loc"])
            if err["type"] == "extra_forbidden":
                unknown = True
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                problems.append(f"options.{key}: unknown {cls.backend} option{hint}")
            elif err["type"] == "value_error":
                problems.append(f"options.{key}: {err['ctx']['error']}")
            else:
                problems.append(f"options.{key}: {err['msg']}")
        text = "; ".join(problems)
        if unknown:
            listed = ", ".join(known) if known else "none"
            text += f"; known {cls.backend} options: {listed}"
        return text


def check_threads(value: Any) -> int | None:
    """The ``threads`` option: ``None`` for ``"auto"``, else the fixed count.

    Raises ``ValueError`` for anything but ``"auto"`` or a whole number >= 1 (a string
    such as ``"2"`` included, as TOML would have it quoted by mistake).
    """
    if value == AUTO:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ValueError(f'must be "auto" or a whole number of threads (1 or more), not {value!r}')


class LocalOptions(BackendOptions):
    """What the in-process torch backends share."""

    threads: Literal["auto"] | int = Field(
        AUTO,
        description='Torch threads: "auto" (one per CPU other processes leave at least half '
        "free, re-decided between forward passes) or a whole number (exactly that many).",
    )
    model_version: str | None = Field(
        None,
        description="What results report as modelVersion; default: from the weights' path "
        "(the built-in model's name when path is empty).",
    )

    @field_validator("threads", mode="before")
    @classmethod
    def _threads(cls, value: Any) -> Any:
        check_threads(value)
        return value

    @property
    def pinned_threads(self) -> int | None:
        """``None`` for ``"auto"``, else the fixed thread count."""
        return check_threads(self.threads)


class TransformersOptions(LocalOptions):
    """A local causal language model run with transformers."""

    backend: ClassVar[str] = "transformers"


class SentenceTransformersOptions(LocalOptions):
    """A local sentence-embedding model run with sentence-transformers."""

    backend: ClassVar[str] = "sentence-transformers"


class FakeOptions(BackendOptions):
    """The deterministic echo backend for tests and benchmarks."""

    backend: ClassVar[str] = "fake"

    latency_s: float = Field(0.0, ge=0, description="Seconds each call sleeps (simulates a model).")
    fail_marker: str | None = Field(
        None, description="A request whose text contains it is rejected (an error line)."
    )
    dimensions: int = Field(8, ge=1, description="Size of the embeddings it returns.")
    max_batch_size: int = Field(
        64,
        ge=1,
        description="Most requests per call (the fake's own; the model's max_batch_size "
        "is not used).",
    )


class UpstreamOptions(BackendOptions):
    """What the HTTP upstream backends share (their limits are model settings)."""

    embed_batch_size: int = Field(
        64, ge=1, description="Most embedding inputs sent in one upstream call."
    )


class OpenAIOptions(UpstreamOptions):
    """An OpenAI-compatible server over HTTP."""

    backend: ClassVar[str] = "openai"

    send_top_k: bool = Field(
        True,
        description="Send topK as top_k (vLLM, Ollama and llama.cpp read it); turn off for "
        "servers that refuse unknown fields.",
    )
    extra_body: dict[str, Any] = Field(
        default_factory=dict,
        description="A table merged into every chat-completion body, for server-specific "
        "fields (e.g. { repetition_penalty = 1.05 }).",
    )


class GeminiOptions(UpstreamOptions):
    """A Gemini-compatible server over HTTP: the Gemini API, or another Overnight."""

    backend: ClassVar[str] = "gemini"

    embed_batch_size: int = Field(
        100,
        ge=1,
        description="Most embedding requests packed into one :batchEmbedContents call "
        "(Gemini's limit is 100).",
    )


class VllmOptions(BackendOptions):
    """vLLM's async engine in the Overnight process. Unset engine fields keep vLLM's own
    defaults."""

    backend: ClassVar[str] = "vllm"

    max_num_seqs: int | None = Field(
        None, ge=1, description="Sequences decoded at once; default: the model's max_batch_size."
    )
    max_model_len: int | None = Field(
        None, ge=16, description="Longest prompt + output, in tokens; default: the model's own."
    )
    max_num_batched_tokens: int | None = Field(
        None, ge=16, description="Tokens per engine step (prefill chunking); vLLM's default."
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] | None = Field(
        None, description="Weight precision; default: the model's dtype setting."
    )
    enforce_eager: bool | None = Field(
        None,
        description="Skip torch.compile and graph capture. Default: true on CPU (start-up "
        "~25 s instead of 75-100 s, about 20% slower), false on GPU.",
    )
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="GPU: share of GPU memory for weights and KV cache."
    )
    kv_cache_space: float | None = Field(
        None,
        gt=0,
        description="CPU: GiB of KV cache (VLLM_CPU_KVCACHE_SPACE); default 4. Ignored on GPU.",
    )
    cpu_threads_bind: str = Field(
        "all",
        description='CPU: cores the engine binds its OpenMP threads to: "all" (every core '
        'this process may use), "auto" (vLLM\'s choice, which reserves a core), "nobind", '
        'or a list such as "0-3" (VLLM_CPU_OMP_THREADS_BIND).',
    )
    cpu_reserved: int = Field(
        0,
        ge=0,
        description="CPU: cores vLLM keeps free of its threads (VLLM_CPU_NUM_OF_RESERVED_CPU).",
    )
    cpu_allocator: Literal["auto", "tcmalloc", "system"] = Field(
        "auto",
        description="CPU: the memory allocator of the engine's processes. auto: preload "
        "tcmalloc (LD_PRELOAD) where the system has it, as vLLM's CPU guide advises (about "
        "5% faster here; `apt-get install libtcmalloc-minimal4`); tcmalloc: the same, and "
        "fail if it is missing; system: the C library's.",
    )
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs to shard the model over.")
    enable_prefix_caching: bool | None = Field(
        None, description="Reuse KV of shared prompt prefixes."
    )
    structured_outputs_backend: Literal["auto", "xgrammar", "guidance", "outlines"] = Field(
        "auto", description="Which grammar library enforces structured output."
    )
    runner: Literal["generate", "pooling"] = Field(
        "generate", description="generate: a causal LM; pooling: an embedding model."
    )
    seed: int = Field(0, description="The engine's base seed (requests without a seed).")
    model_version: str | None = Field(None, description="What results report as modelVersion.")
    ignore_eos: bool = Field(
        False,
        description="Benchmarks only: keep generating past EOS up to maxOutputTokens, so "
        "every engine in a comparison generates the same number of tokens.",
    )
