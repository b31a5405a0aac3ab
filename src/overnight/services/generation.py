"""Synchronous use-cases: generateContent, embedContent and countTokens on one model.

These run a request at once on the same started backends the batch workers use (the
pool is shared), so a model is loaded once per process whichever path uses it first.
A request the model cannot serve raises ``InvalidArgument`` naming the field, exactly
as it would become an error line in a batch.

The service sees the pool through ``ModelPool``, a protocol of just what it uses, so
the use-cases never import the backends (``backends/pool.py`` is handed in by
``app.build_runtime``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from overnight.catalog import ModelCatalog, ModelEntry
from overnight.domain.batches import BatchKind
from overnight.domain.capabilities import Capabilities, check_embed, check_generate
from overnight.domain.file_parts import (
    TenantFileReader,
    has_file_parts,
    reader_for,
    resolve_file_parts,
)
from overnight.domain.generation import apply_defaults
from overnight.domain.requests import EmbedRequest, GenerateRequest
from overnight.domain.results import EmbedResult, GenerateResult
from overnight.errors import BackendError, InvalidArgument, RequestRejected


class ModelBackend(Protocol):
    """A started model, as the synchronous calls use it (``backends.base.Backend``)."""

    capabilities: Capabilities

    async def generate(
        self, requests: Sequence[GenerateRequest]
    ) -> list[GenerateResult | RequestRejected]: ...

    async def embed(
        self, requests: Sequence[EmbedRequest]
    ) -> list[EmbedResult | RequestRejected]: ...

    async def count_tokens(
        self, requests: Sequence[GenerateRequest | EmbedRequest]
    ) -> list[int]: ...


class ModelPool(Protocol):
    """The process's started models (``backends.pool.BackendPool``)."""

    async def get(self, name: str) -> ModelBackend:
        """The started model ``name`` (a configured name, not an alias)."""
        ...


class GenerationService:
    """Runs single requests on a model, resolving names and aliases through the catalog."""

    def __init__(
        self, catalog: ModelCatalog, pool: ModelPool, read_file: TenantFileReader | None = None
    ) -> None:
        self.catalog = catalog
        self.pool = pool
        self.read_file = read_file  # resolves fileData parts (``FileService.read_part``)

    async def _backend(self, model: str, kind: BatchKind) -> tuple[ModelEntry, ModelBackend]:
        entry = self.catalog.resolve_for(model, kind)
        return entry, await self.pool.get(entry.name)

    async def generate(
        self, model: str, request: GenerateRequest, *, tenant: str | None = None
    ) -> GenerateResult:
        """One GenerateContentResponse. Raises NotFound (unknown model, or a ``fileData``
        file ``tenant`` does not have), InvalidArgument (wrong kind of model, or a field
        this model cannot honour) or a BackendError."""
        entry, backend = await self._backend(model, BatchKind.GENERATE)
        try:
            check_generate(request, backend.capabilities)
        except RequestRejected as exc:
            raise InvalidArgument(exc.message) from None
        if tenant is not None and self.read_file is not None and has_file_parts(request):
            request = await resolve_file_parts(request, reader_for(self.read_file, tenant))
        # The model's defaults fill what the request leaves unset; no seed is derived:
        # like Gemini, a synchronous call without a seed draws afresh.
        request = apply_defaults(request, entry.generation_defaults)
        (outcome,) = await backend.generate([request])
        if isinstance(outcome, RequestRejected):
            raise _rejected(outcome)
        return outcome

    async def embed(self, model: str, requests: Sequence[EmbedRequest]) -> list[EmbedResult]:
        """One embedding per request, in order. A request the model cannot serve fails
        the whole call with InvalidArgument naming ``requests[i]``."""
        _, backend = await self._backend(model, BatchKind.EMBED)
        caps = backend.capabilities
        for i, request in enumerate(requests):
            try:
                check_embed(request, caps)
            except RequestRejected as exc:
                raise InvalidArgument(_at(i, len(requests), exc.message)) from None
        results: list[EmbedResult] = []
        size = max(caps.max_batch_size, 1)
        for start in range(0, len(requests), size):
            outcomes = await backend.embed(requests[start : start + size])
            for offset, outcome in enumerate(outcomes):
                if isinstance(outcome, RequestRejected):
                    index = start + offset
                    raise InvalidArgument(_at(index, len(requests), outcome.message))
                results.append(outcome)
        return results

    async def count_tokens(self, model: str, request: GenerateRequest) -> int:
        """Prompt tokens of ``request`` as the model counts them. For an embedding model,
        each content is counted as one embedding input, and the counts are summed."""
        entry = self.catalog.resolve(model)
        backend = await self.pool.get(entry.name)
        counted: list[GenerateRequest | EmbedRequest]
        if BatchKind.GENERATE in entry.kinds:
            counted = [request]
        else:
            counted = [EmbedRequest(content=content) for content in request.contents]
        try:
            counts = await backend.count_tokens(counted)
        except RequestRejected as exc:
            raise _rejected(exc) from None
        return sum(counts)


def _rejected(exc: RequestRejected) -> BackendError | InvalidArgument:
    if exc.status == "INVALID_ARGUMENT":
        return InvalidArgument(exc.message)
    return exc


def _at(index: int, total: int, message: str) -> str:
    return f"requests[{index}]: {message}" if total > 1 else message
