"""Backend names to implementations, imported lazily.

The API and CLI never import torch unless a local model is actually used: the
module of a backend is imported only when a model that uses it is started.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from overnight.backends.base import Backend
from overnight.config import ModelSettings
from overnight.errors import ConfigError

BACKENDS: dict[str, str] = {
    "fake": "overnight.backends.fake:FakeBackend",
    "transformers": "overnight.backends.transformers:TransformersBackend",
    "sentence-transformers": "overnight.backends.sentence_transformers:SentenceTransformersBackend",
    "vllm": "overnight.backends.vllm:VllmBackend",
    "openai": "overnight.backends.openai:OpenAIBackend",
    "gemini": "overnight.backends.gemini:GeminiBackend",
}


def create_backend(name: str, settings: ModelSettings, cache_dir: Path) -> Backend:
    """Build (not start) the backend for the configured model ``name``."""
    target = BACKENDS.get(settings.backend)
    if target is None:
        raise ConfigError(
            f"model {name!r}: unknown backend {settings.backend!r}; "
            f"choose one of {', '.join(sorted(BACKENDS))}"
        )
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    factory = getattr(module, attr)
    if settings.backend == "fake":
        backend: Backend = factory(name, settings.options)
    else:
        backend = factory(name, settings, cache_dir)
    return backend
