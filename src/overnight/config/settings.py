"""The one ``Settings`` object and how it is read.

Precedence, lowest first: built-in defaults, ``overnight.toml`` (or ``--config`` /
``OVERNIGHT_CONFIG``), ``OVERNIGHT_*`` environment variables, command-line flags.

Environment variables name a top-level field (``OVERNIGHT_DATA_DIR``) or a field of
a section with a double underscore (``OVERNIGHT_ENGINE__SHARD_SIZE``). Every field
is documented in ``docs/configuration.md``, which a test keeps in step with this file.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from overnight.config.base import Section
from overnight.config.engine import EngineSettings
from overnight.config.models import ModelSettings, builtin_aliases, builtin_models
from overnight.config.server import ServerSettings
from overnight.config.webhooks import WebhookSettings
from overnight.errors import ConfigError

ENV_PREFIX = "OVERNIGHT_"
CONFIG_FILE_NAME = "overnight.toml"


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "overnight"


class Settings(Section):
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
    webhooks: WebhookSettings = Field(
        default_factory=WebhookSettings, description="Webhook deliveries."
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
