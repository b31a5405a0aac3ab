"""Started backends, one per configured model, shared by every user in a process.

The batch workers and the synchronous calls (``services/generation.py``) take their
backends from one ``BackendPool``, so a model is loaded once per process, by
whichever path asks first. The pool resolves names through a ``ModelResolver``
(``catalog.ModelCatalog`` in production), typed here as a protocol so that the
backends layer does not depend on the catalog above it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from overnight.backends.base import Backend
from overnight.backends.registry import create_backend
from overnight.config import ModelSettings, generation_defaults
from overnight.domain.requests import GenerationConfig


class ResolvedModel(Protocol):
    """A configured model: its own name and its settings."""

    @property
    def name(self) -> str: ...

    @property
    def settings(self) -> ModelSettings: ...


class ModelResolver(Protocol):
    """Maps a model name (or alias) to the configured model; raises ``NotFound``."""

    def resolve(self, name: str) -> ResolvedModel: ...


class BackendPool:
    """Creates and starts each model's backend once, on first use."""

    def __init__(self, models: ModelResolver, cache_dir: Path) -> None:
        self._models = models
        self._cache_dir = cache_dir
        self._backends: dict[str, Backend] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def add(self, name: str, backend: Backend) -> None:
        """Use an already built backend for ``name`` (tests, embedding in apps)."""
        self._backends[name] = backend

    def loaded(self, name: str) -> bool:
        return name in self._backends

    def generation_defaults(self, name: str) -> GenerationConfig:
        """What requests to model ``name`` get for the generationConfig fields they leave
        unset (``config.generation``). Raises ``NotFound`` for an unknown model."""
        return generation_defaults(self._models.resolve(name).settings)

    async def get(self, name: str, on_status: Callable[[str], None] | None = None) -> Backend:
        """The started backend of model ``name``; starts it on first use.

        ``on_status`` hears what a slow start is waiting for (converting weights,
        starting an engine), for backends that report it; it may be called from
        another thread.
        """
        backend = self._backends.get(name)
        if backend is not None:
            return backend
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            if name not in self._backends:
                entry = self._models.resolve(name)
                backend = create_backend(entry.name, entry.settings, self._cache_dir)
                if on_status is not None and hasattr(backend, "on_status"):
                    backend.on_status = on_status
                await backend.start()
                self._backends[name] = backend
        return self._backends[name]

    async def close(self) -> None:
        for backend in self._backends.values():
            await backend.close()
        self._backends.clear()
