"""The backend seam.

A backend turns canonical requests into canonical results. It returns one item per
request, in order: a result, or a ``RequestRejected`` *instance* for a request it
cannot serve (that request becomes an error line, the rest go on). It *raises*
``RetryableError`` or ``BackendUnavailable`` when the whole call failed; the engine
then retries the shard later instead of failing its lines.

What a model can do is data (``Capabilities``, in ``domain/capabilities.py``), checked
by ``check_generate``/``check_embed`` before a request reaches the backend, so an
unsupported field is never silently ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import Protocol, runtime_checkable

# What a model can do is domain data (``domain/capabilities.py``); re-exported here
# because every backend declares its capabilities through this seam.
from overnight.domain.capabilities import BASIC_GENERATION_FIELDS as BASIC_GENERATION_FIELDS
from overnight.domain.capabilities import Capabilities as Capabilities
from overnight.domain.capabilities import check_embed as check_embed
from overnight.domain.capabilities import check_generate as check_generate
from overnight.domain.capabilities import prompt_text as prompt_text
from overnight.domain.requests import EmbedRequest, GenerateRequest
from overnight.domain.results import EmbedResult, GenerateResult
from overnight.errors import RequestRejected

GenerateOutcome = GenerateResult | RequestRejected
EmbedOutcome = EmbedResult | RequestRejected

# Set by the engine around a backend call when someone is watching progress (``overnight
# run``'s bar). A backend whose requests finish one by one within a call (vLLM's
# continuous batching) may call it with (requests finished, tokens generated) as they
# do, on the caller's event loop; the engine reports whatever it did not when the call
# returns. Backends that finish a call all at once ignore it.
LIVE_PROGRESS: ContextVar[Callable[[int, int], None] | None] = ContextVar(
    "overnight_live_progress", default=None
)


@runtime_checkable
class Backend(Protocol):
    """A model engine. Blocking work must run off the event loop."""

    capabilities: Capabilities

    async def start(self) -> None:
        """Load weights / open connections. Idempotent. Raises BackendUnavailable."""

    async def generate(self, requests: Sequence[GenerateRequest]) -> list[GenerateOutcome]:
        """One outcome per request, in order."""
        ...

    async def embed(self, requests: Sequence[EmbedRequest]) -> list[EmbedOutcome]:
        """One outcome per request, in order."""
        ...

    async def count_tokens(self, requests: Sequence[GenerateRequest | EmbedRequest]) -> list[int]:
        """Prompt tokens per request, in order, as this model would count them."""
        ...

    async def close(self) -> None:
        """Release weights and connections."""
