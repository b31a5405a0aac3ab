"""The vLLM backend: vLLM's async engine (``AsyncLLM``), started once and kept.

vLLM batches continuously: a request joins the running batch at the next step and
leaves it when it is done. So ``generate`` submits every request of a micro-batch to the
engine at once and awaits them together. With ``engine.workers`` shards running side by
side, the next shard's requests are already queued while the last ones of the current
shard finish, and the engine stays full (``max_num_seqs``) across shard and batch
boundaries; each shard is still committed as soon as its own requests are done.

The engine lives on a thread of its own with its own event loop: the engine core runs
in a child process, and this thread feeds it, tokenizes and detokenizes. The worker's
event loop only awaits futures, so heartbeats and the API stay responsive while the
engine is busy, and any event loop can call the backend.

Weights (``[models.NAME] path``): a folder vLLM can load, or a Hugging Face id already in
the local cache (``HF_HUB_OFFLINE=1``; nothing is downloaded). Empty: the bundled
SmolLM2-135M-Instruct GGUF, converted once to a bfloat16 safetensors folder with its
tokenizer under ``CACHE_DIR/NAME-vllm-HASH`` (``backends.weights``).

Request mapping:
- the tokenizer's chat template, ``systemInstruction`` as the system message and
  ``user``/``model`` turns as user/assistant;
- generationConfig → SamplingParams: ``temperature`` (absent: 0, greedy), ``topP``,
  ``topK``, ``maxOutputTokens`` (default: the model's ``max_output_tokens``),
  ``stopSequences`` (the text is cut before the stop), ``seed`` (candidate ``i`` uses
  ``seed + i``), ``candidateCount`` → ``n``, ``presencePenalty``, ``frequencyPenalty``;
- JSON mode, ``responseSchema``, ``responseJsonSchema`` and ``text/x.enum`` through
  vLLM's structured outputs (``backends.schema.output_constraint`` names the
  constraint; vLLM compiles it, with xgrammar by default);
- function calling as on the transformers backend (``backends.tools``): the same
  prompt, the same grammar for mode ``ANY``, the same reading of the answer;
- finishReason ``STOP`` (EOS or a stop sequence) or ``MAX_TOKENS``; token counts come
  from vLLM's outputs (the final EOS token is not counted, as in the transformers
  backend).

Options (``[models.NAME] options = {...}``) are ``VllmOptions`` (``backends.options``);
an unknown one is a configuration error naming it. The engine's environment, its
processes and its event loop are set up by ``backends.vllm_runtime``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from overnight.backends.base import (
    BASIC_GENERATION_FIELDS,
    LIVE_PROGRESS,
    Capabilities,
    EmbedOutcome,
    GenerateOutcome,
)
from overnight.backends.chat import chat_prompt, embed_text
from overnight.backends.options import VllmOptions
from overnight.backends.schema import (
    STRUCTURED_FIELDS,
    STRUCTURED_MIME_TYPES,
    OutputConstraint,
)
from overnight.backends.tools import constraint_for, read_calls
from overnight.backends.vllm_runtime import (
    INSTALL_HINT,
    EngineLoop,
    configure_environment,
    engine_args,
    watch,
)
from overnight.backends.vllm_watchdog import children
from overnight.backends.weights import bf16_folder, model_version
from overnight.config import ModelSettings
from overnight.domain.requests import EmbedRequest, GenerateRequest
from overnight.domain.results import Candidate, EmbedResult, GenerateResult
from overnight.errors import (
    BackendError,
    BackendUnavailable,
    RequestRejected,
    RetryableError,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

GENERATION_FIELDS = (
    BASIC_GENERATION_FIELDS | STRUCTURED_FIELDS | {"presence_penalty", "frequency_penalty"}
)
StatusFn = Callable[[str], None]


class VllmBackend:
    """A model served by vLLM's ``AsyncLLM``; see the module docstring."""

    def __init__(self, name: str, settings: ModelSettings, cache_dir: Path) -> None:
        self.name = name
        self.settings = settings
        self.options = VllmOptions.parse(name, settings.options)
        self.cache_dir = Path(cache_dir)
        pooling = self.options.runner == "pooling"
        self.capabilities = Capabilities(
            model_version=self.options.model_version or model_version(settings.path),
            generate=not pooling,
            embed=pooling,
            generation_fields=GENERATION_FIELDS,
            response_mime_types=frozenset({"text/plain"}) | STRUCTURED_MIME_TYPES,
            max_batch_size=settings.max_batch_size,
            max_candidates=settings.max_candidates,
            function_calling=not pooling,
        )
        self.on_status: StatusFn | None = None  # start-up progress, for the CLI's spinner
        self._engine_loop = EngineLoop(name)
        self._engine: Any = None
        self._tokenizer: Any = None
        self._eos_ids: frozenset[int] = frozenset()
        self._start_lock = threading.Lock()
        self._watchdog: subprocess.Popen[bytes] | None = None

    # ---- the Backend protocol ---------------------------------------------------------

    async def start(self) -> None:
        """Convert the weights if needed and start the engine, once. Raises BackendUnavailable."""
        if self._engine is None:
            await asyncio.to_thread(self._start_blocking)

    async def generate(self, requests: Sequence[GenerateRequest]) -> list[GenerateOutcome]:
        """Submit every request at once; one outcome per request, in order.

        Each request that finishes is reported to ``LIVE_PROGRESS`` at once (on this
        loop), so a progress bar moves while the engine works through the call.
        """
        await self.start()
        hook, loop = LIVE_PROGRESS.get(), asyncio.get_running_loop()

        def finished(tokens: int) -> None:  # called on the engine's thread
            if hook is not None:
                loop.call_soon_threadsafe(hook, 1, tokens)

        return await self._on_engine(self._generate(list(requests), finished))

    async def embed(self, requests: Sequence[EmbedRequest]) -> list[EmbedOutcome]:
        if not self.capabilities.embed:
            why = f"model {self.capabilities.model_version} does not produce embeddings"
            return [RequestRejected(why) for _ in requests]
        await self.start()
        return await self._on_engine(self._embed(list(requests)))

    async def count_tokens(self, requests: Sequence[GenerateRequest | EmbedRequest]) -> list[int]:
        """Prompt tokens after the chat template, as ``promptTokenCount`` reports them."""
        await self.start()
        return await self._on_engine(self._count_tokens(list(requests)))

    async def close(self) -> None:
        """Stop the engine and its processes. Idempotent."""
        if not self._engine_loop.running:
            return
        if self._engine is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._on_engine(self._shutdown()), 30)
        await self._engine_loop.stop()
        gc.collect()

    # ---- start-up (blocking; runs on a worker thread) -------------------------------

    def _status(self, message: str) -> None:
        log.info("model %s: %s", self.name, message)
        if self.on_status is not None:
            with contextlib.suppress(Exception):
                self.on_status(message)

    def _start_blocking(self) -> None:
        with self._start_lock:
            if self._engine is not None:
                return
            started = time.monotonic()
            folder = self._weights_folder()
            on_cpu = configure_environment(self.name, self.options)
            try:
                from vllm.engine.arg_utils import AsyncEngineArgs
            except ImportError as exc:
                raise BackendUnavailable(
                    f"model {self.name!r} needs vLLM ({exc}); run: {INSTALL_HINT}"
                ) from None
            args = AsyncEngineArgs(**engine_args(folder, on_cpu, self.options, self.settings))
            mode = "eager" if args.enforce_eager else "compiled (slow start-up)"
            where = "CPU" if on_cpu else "GPU"
            self._status(f"starting the vLLM engine on {where}, {mode}; this takes a while")
            self._engine_loop.start()
            before = children(os.getpid())
            try:
                self._engine = self._engine_loop.call(self._create_engine(args))
            except BackendError:
                raise
            except Exception as exc:
                raise BackendUnavailable(
                    f"model {self.name!r}: the vLLM engine did not start: {type(exc).__name__}: "
                    f"{exc}. On CPU, check options.kv_cache_space against free memory; "
                    "set VLLM_LOGGING_LEVEL=INFO to see vLLM's own log"
                ) from None
            self._watchdog = watch(children(os.getpid()) - before)
            self._tokenizer = self._engine.get_tokenizer()  # the engine's own: same ids
            eos = self._tokenizer.eos_token_id
            self._eos_ids = frozenset() if eos is None else frozenset({eos})
            extra = {"engine": "vllm", "device": where.lower(), "dtype": str(args.dtype)}
            self.capabilities = replace(self.capabilities, extra=extra)
            self._status(f"vLLM engine ready in {time.monotonic() - started:.0f} s")

    def _weights_folder(self) -> str:
        try:  # the version, without importing transformers (seconds) before the engine starts
            version = metadata.version("transformers")
        except metadata.PackageNotFoundError as exc:
            raise BackendUnavailable(f"model {self.name!r}: {exc}; run: {INSTALL_HINT}") from None
        return bf16_folder(self.name, self.settings.path, self.cache_dir, version, self._status)

    # ---- on the engine's own event loop ---------------------------------------------

    async def _on_engine(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the engine's loop; cancelling the caller cancels it there too."""
        return await self._engine_loop.run(coro)

    async def _create_engine(self, args: Any) -> Any:
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_engine_args(args)

    async def _shutdown(self) -> None:
        """Kill the engine's processes, then let vLLM clean up after them.

        Every result has been handed out by now, so the engine holds nothing worth a
        graceful stop, and vLLM's own (waiting for its workers) takes ~5 s on two cores,
        which ``overnight run`` would add to every run.
        """
        engine, self._engine = self._engine, None
        watchdog, self._watchdog = self._watchdog, None
        if engine is None:
            return
        if watchdog is not None and watchdog.stdin is not None:
            if engine.output_handler is not None:
                engine.output_handler.cancel()
            with contextlib.suppress(AttributeError):  # a deliberate stop, not a crash
                engine.engine_core.resources.engine_dead = True
            watchdog.stdin.close()  # the watchdog kills the engine's process tree
            await asyncio.to_thread(watchdog.wait, 10)
        engine.shutdown(timeout=2)

    # ---- generation (on the engine's loop) --------------------------------------------

    async def _generate(
        self, requests: list[GenerateRequest], finished: Callable[[int], None]
    ) -> list[GenerateOutcome]:
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        outcomes: list[GenerateOutcome | asyncio.Future[GenerateOutcome]] = []
        texts: dict[int, str] = {}
        for index, request in enumerate(requests):
            try:
                texts[index] = self._prompt(request)
            except RequestRejected as exc:
                outcomes.append(exc)
                continue
            outcomes.append(_PENDING)
        ids = dict(zip(texts, self._encode(list(texts.values())), strict=True))
        limit = self.settings.max_input_tokens
        for index, prompt in ids.items():
            config = requests[index].config
            if len(prompt) > limit:
                outcomes[index] = RequestRejected(
                    f"the prompt is {len(prompt)} tokens; model {self.name} accepts at most "
                    f"{limit} (max_input_tokens)"
                )
                continue
            try:
                params = SamplingParams(
                    n=config.candidate_count or 1,
                    temperature=config.temperature or 0.0,
                    top_p=1.0 if config.top_p is None else config.top_p,
                    top_k=config.top_k or 0,
                    seed=config.seed,
                    max_tokens=config.max_output_tokens or self.settings.max_output_tokens,
                    stop=[s for s in config.stop_sequences or () if s] or None,
                    presence_penalty=config.presence_penalty or 0.0,
                    frequency_penalty=config.frequency_penalty or 0.0,
                    structured_outputs=_structured(constraint_for(requests[index])[0]),
                    ignore_eos=self.options.ignore_eos,
                    output_kind=RequestOutputKind.FINAL_ONLY,
                )
            except RequestRejected as exc:
                outcomes[index] = exc
                continue
            except ValueError as exc:  # vLLM's own checks (VLLMValidationError …)
                outcomes[index] = RequestRejected(f"generationConfig: {exc}")
                continue
            outcomes[index] = asyncio.ensure_future(self._one(prompt, params, finished))
        done: list[GenerateOutcome] = await _gather(outcomes)
        return [
            read_calls(r, o) if isinstance(o, GenerateResult) else o
            for r, o in zip(requests, done, strict=True)
        ]

    async def _one(
        self, prompt: list[int], params: Any, finished: Callable[[int], None]
    ) -> GenerateOutcome:
        final, request_id = None, uuid.uuid4().hex
        try:
            async for output in self._engine.generate(
                {"prompt_token_ids": prompt}, params, request_id
            ):
                final = output
        except asyncio.CancelledError:
            await _abort(self._engine, request_id)
            raise
        except ValueError as exc:  # the request itself was refused
            return RequestRejected(f"the vLLM engine refused the request: {exc}")
        except Exception as exc:
            raise _engine_error(exc) from exc
        if final is None:
            raise BackendError("the vLLM engine returned no output for a request")
        candidates = []
        for out in sorted(final.outputs, key=lambda o: o.index):
            if out.finish_reason == "abort":
                raise RetryableError("the vLLM engine aborted a request (it may be overloaded)")
            tokens = len(out.token_ids)
            if tokens and out.finish_reason == "stop" and out.token_ids[-1] in self._eos_ids:
                tokens -= 1
            reason = "MAX_TOKENS" if out.finish_reason == "length" else "STOP"
            candidates.append(Candidate(out.text, reason, tokens))
        result = GenerateResult(candidates, len(prompt), self.capabilities.model_version)
        finished(result.candidates_tokens)
        return result

    async def _embed(self, requests: list[EmbedRequest]) -> list[EmbedOutcome]:
        from vllm.pooling_params import PoolingParams

        texts = [embed_text(r) for r in requests]
        limit = self.settings.max_input_tokens
        encoded = [ids[:limit] for ids in self._encode(texts, special=True)]

        async def one(prompt: list[int], request: EmbedRequest) -> EmbedOutcome:
            final, request_id = None, uuid.uuid4().hex
            try:
                async for output in self._engine.encode(
                    {"prompt_token_ids": prompt}, PoolingParams(task="embed"), request_id
                ):
                    final = output
            except asyncio.CancelledError:
                await _abort(self._engine, request_id)
                raise
            except ValueError as exc:
                return RequestRejected(f"the vLLM engine refused the request: {exc}")
            except Exception as exc:
                raise _engine_error(exc) from exc
            if final is None:
                raise BackendError("the vLLM engine returned no embedding for a request")
            values = [float(v) for v in final.outputs.data.tolist()]
            return EmbedResult(
                _truncate(values, request.output_dimensionality),
                len(prompt),
                self.capabilities.model_version,
            )

        return await _gather(
            [asyncio.ensure_future(one(p, r)) for p, r in zip(encoded, requests, strict=True)]
        )

    # ---- text (on the engine's loop: a fast tokenizer must not be shared across threads)

    async def _count_tokens(self, requests: list[GenerateRequest | EmbedRequest]) -> list[int]:
        texts = [
            embed_text(r) if isinstance(r, EmbedRequest) else self._prompt(r) for r in requests
        ]
        return [len(ids) for ids in self._encode(texts, special=self.capabilities.embed)]

    def _prompt(self, request: GenerateRequest) -> str:
        return chat_prompt(self._tokenizer, request)

    def _encode(self, texts: list[str], *, special: bool = False) -> list[list[int]]:
        if not texts:
            return []
        ids: list[list[int]] = self._tokenizer(texts, add_special_tokens=special)["input_ids"]
        return ids


# ---- helpers ---------------------------------------------------------------------------

_PENDING = RequestRejected("pending")  # a placeholder, replaced before anyone sees it


async def _abort(engine: Any, request_id: str) -> None:
    """Abort a cancelled request by the id we gave it.

    vLLM aborts a cancelled request itself only once ``add_request`` has returned; one
    cancelled while it was being added (a slow, loaded front end) would otherwise run on
    in the engine core to its token limit, holding a slot that the next call waits for.
    Aborting an id the engine no longer knows is a no-op.
    """
    with contextlib.suppress(Exception):
        await engine.abort(request_id)


async def _gather(items: Sequence[T | asyncio.Future[T]]) -> list[T]:
    """Await the futures among ``items`` together; if one raises, cancel the rest."""
    tasks = [item for item in items if isinstance(item, asyncio.Future)]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return [item.result() if isinstance(item, asyncio.Future) else item for item in items]


def _structured(constraint: OutputConstraint | None) -> Any:
    if constraint is None:
        return None
    from vllm.sampling_params import StructuredOutputsParams

    if constraint.kind == "enum":
        return StructuredOutputsParams(choice=list(constraint.choices or ()))
    if constraint.kind == "grammar":
        return StructuredOutputsParams(grammar=constraint.ebnf)
    if constraint.kind == "schema":
        return StructuredOutputsParams(json=constraint.json_schema, disable_any_whitespace=True)
    return StructuredOutputsParams(json_object=True, disable_any_whitespace=True)


def _truncate(values: list[float], dimensions: int | None) -> list[float]:
    if not dimensions or dimensions >= len(values):
        return values
    cut = values[:dimensions]
    norm = math.sqrt(sum(v * v for v in cut)) or 1.0
    return [v / norm for v in cut]


def _engine_error(exc: Exception) -> BackendError:
    if isinstance(exc, BackendError):
        return exc
    name = type(exc).__name__
    if name == "EngineDeadError":
        return BackendUnavailable(f"the vLLM engine died: {exc}; restart the process")
    text = str(exc).lower()
    if "out of memory" in text:
        return RetryableError(f"out of memory while generating: {exc}")
    return BackendError(f"generation failed: {name}: {exc}")
