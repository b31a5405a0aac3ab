"""Every backend, one entry each: its name, where its code is, what it serves, its options.

The entry is what the rest of Overnight may know about a backend without loading it:
the batch kinds it can serve (the catalog answers ``models.get`` and checks a batch's
kind with them), the typed ``options`` model (the settings validate a model's
``options`` table with it, and the docs are generated from it) and the extra it needs.
The backend's module is imported only when a model that uses it is built, so the API
and the CLI never import torch, vLLM or an HTTP client unless a model needs them.

This module stays light (pydantic, the standard library, ``overnight.domain``,
``overnight.errors`` and ``backends.options``): the configuration and the API layer
import it.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Self

from pydantic import BaseModel, model_validator
from pydantic_core import PydanticCustomError

from overnight.backends.options import (
    BackendOptions,
    FakeOptions,
    GeminiOptions,
    OpenAIOptions,
    OptionsError,
    SentenceTransformersOptions,
    TransformersOptions,
    VllmOptions,
)
from overnight.domain.batches import BatchKind
from overnight.errors import ConfigError

if TYPE_CHECKING:
    from overnight.backends.base import Backend
    from overnight.config import ModelSettings

GENERATE = frozenset({BatchKind.GENERATE})
EMBED = frozenset({BatchKind.EMBED})
BOTH = GENERATE | EMBED


@dataclass(frozen=True, slots=True)
class BackendEntry:
    """One backend, known without importing it."""

    name: str
    target: str  # "module:Class"; the class takes (model name, ModelSettings, cache dir)
    kinds: frozenset[BatchKind]
    options: type[BackendOptions]
    summary: str
    extra: str | None = None  # the pip extra it needs: "local", "vllm"; None: always there
    modules: tuple[str, ...] = ()  # top-level imports it needs beyond Overnight's own

    @property
    def local(self) -> bool:
        """Runs model weights in this process (as opposed to a fake or an HTTP upstream)."""
        return self.extra is not None

    def load(self) -> type[Any]:
        """Import the backend's class. Raises ``ImportError`` when its extra is missing."""
        module_name, _, attr = self.target.partition(":")
        cls: type[Any] = getattr(importlib.import_module(module_name), attr)
        return cls

    def create(self, name: str, settings: ModelSettings, cache_dir: Path) -> Backend:
        """Build (not start) the backend of model ``name``. Raises ``ConfigError``."""
        backend: Backend = self.load()(name, settings, cache_dir)
        return backend


BACKENDS: Mapping[str, BackendEntry] = MappingProxyType(
    {
        entry.name: entry
        for entry in (
            BackendEntry(
                name="transformers",
                target="overnight.backends.transformers:TransformersBackend",
                kinds=GENERATE,
                options=TransformersOptions,
                summary="a local causal LM (CPU or GPU), batched with model.generate",
                extra="local",
                modules=("torch", "transformers"),
            ),
            BackendEntry(
                name="sentence-transformers",
                target="overnight.backends.sentence_transformers:SentenceTransformersBackend",
                kinds=EMBED,
                options=SentenceTransformersOptions,
                summary="a local sentence-embedding model",
                extra="local",
                modules=("torch", "sentence_transformers"),
            ),
            BackendEntry(
                name="vllm",
                target="overnight.backends.vllm:VllmBackend",
                # generate with the default runner; embed with options.runner = "pooling"
                kinds=BOTH,
                options=VllmOptions,
                summary="vLLM's async engine in the Overnight process (CPU or GPU)",
                extra="vllm",
                modules=("vllm",),
            ),
            BackendEntry(
                name="openai",
                target="overnight.backends.openai:OpenAIBackend",
                kinds=BOTH,
                options=OpenAIOptions,
                summary="any OpenAI-compatible server over HTTP (vLLM, Ollama, llama.cpp, "
                "TGI, hosted APIs)",
            ),
            BackendEntry(
                name="gemini",
                target="overnight.backends.gemini:GeminiBackend",
                kinds=BOTH,
                options=GeminiOptions,
                summary="any Gemini-compatible server over HTTP: the Gemini API, or another "
                "Overnight",
            ),
            BackendEntry(
                name="fake",
                target="overnight.backends.fake:FakeBackend",
                kinds=BOTH,
                options=FakeOptions,
                summary="a deterministic echo, for tests and benchmarks",
            ),
        )
    }
)


def unknown_backend(backend: str) -> str:
    """The message for a backend name no entry has."""
    return f"unknown backend {backend!r}; choose one of {', '.join(sorted(BACKENDS))}"


def entry(backend: str, model: str | None = None) -> BackendEntry:
    """The entry of ``backend``. Raises ``ConfigError`` listing the known ones."""
    found = BACKENDS.get(backend)
    if found is None:
        prefix = f"model {model!r}: " if model is not None else ""
        raise ConfigError(prefix + unknown_backend(backend))
    return found


def kinds(backend: str) -> frozenset[BatchKind]:
    """The batch kinds ``backend`` can serve (generate, for a name no entry has)."""
    found = BACKENDS.get(backend)
    return found.kinds if found is not None else GENERATE


def create_backend(name: str, settings: ModelSettings, cache_dir: Path) -> Backend:
    """Build (not start) the backend for the configured model ``name``.

    Raises ``ConfigError`` for an unknown backend or a bad option.
    """
    return entry(settings.backend, name).create(name, settings, cache_dir)


class CheckedBackend(BaseModel):
    """Mixin of ``config.ModelSettings``: its ``backend`` must have an entry here, and its
    ``options`` table must fit that backend's ``Options`` model.

    So a bad option stops Overnight when the settings are read, with the model and the
    option named (``models.mine: options.thread: unknown transformers option (did you mean
    threads?); known transformers options: threads, model_version``), not when the model
    is first used. Settings built in code skip this; each backend parses its options again.
    """

    @model_validator(mode="after")
    def _backend_and_options(self) -> Self:
        backend, options = getattr(self, "backend"), getattr(self, "options")  # noqa: B009
        found = BACKENDS.get(backend)
        try:
            if found is None:
                raise OptionsError(f"backend: {unknown_backend(backend)}")
            found.options.check(options)
        except OptionsError as exc:
            # A custom error keeps the message as it is (no "Value error, " in front).
            raise PydanticCustomError(
                "backend_options", "{problem}", {"problem": str(exc)}
            ) from None
        return self
