"""Per-row decoding inside one batched ``model.generate`` call.

Requests with different generationConfigs share a batch. ``generate`` itself runs
greedy; ``RowControls.sample`` (a logits processor) turns each sampling row's logits
into a one-hot choice drawn with that row's temperature, topK, topP and its own seeded
generator, and ``RowControls.stop`` (a stopping criterion) ends each row at its own EOS,
stop sequence or token limit. ``finish`` then cuts and labels each row's text.

``GrammarMask`` (a logits processor that runs before ``sample``) constrains the rows
that carry a compiled grammar (structured output): each step it advances every live
constrained row's xgrammar matcher with the token that row just got, fills one shared
bitmask for all of them in one call, and applies it to their logits in one call. Free
rows in the same batch are untouched. When a grammar is complete only EOS is allowed,
so the row ends at EOS as any other would; one that runs out of tokens first ends with
``MAX_TOKENS`` and its text as it stands.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

NUCLEUS_CANDIDATES = 256  # topP looks at this many best tokens first: a full sort is slow


@dataclass(slots=True)
class Row:
    """One candidate of one request: a row of a generate batch, and then its answer."""

    request: int
    candidate: int
    prompt: list[int]
    max_tokens: int
    temperature: float
    top_k: int
    top_p: float
    seed: int
    stops: tuple[str, ...]
    grammar: Any = None  # an xgrammar CompiledGrammar: constrained decoding; None: free
    presence_penalty: float = 0.0  # see backends.penalties
    frequency_penalty: float = 0.0
    text: str = ""
    finish_reason: str = "STOP"
    token_count: int = 0


class RowControls:
    """Per-row sampling and stopping inside one ``model.generate`` call.

    ``generate`` itself runs greedy. ``sample`` (a logits processor) turns each sampling
    row's logits into a one-hot choice, drawn with that row's settings and generator;
    ``stop`` (a stopping criterion) ends each row at its own EOS, stop sequence or limit.
    """

    EOS, STOP_SEQUENCE, LIMIT = "eos", "stop", "limit"

    def __init__(self, rows: list[Row], tokenizer: Any, eos_ids: frozenset[int], device: Any):
        import torch

        self.rows, self.tokenizer, self.eos_ids = rows, tokenizer, eos_ids
        # A stop sequence of n characters spans at most 4n tokens (byte-level pieces).
        self.windows = [4 * max(map(len, row.stops), default=0) + 2 for row in rows]
        self.step = 0
        self.ended: list[str | None] = [None] * len(rows)
        self.lengths = [0] * len(rows)
        self.generators: dict[int, torch.Generator] = {}
        for i, row in enumerate(rows):
            if row.temperature > 0:
                self.generators[i] = torch.Generator(device=device)
                self.generators[i].manual_seed(row.seed)

    def sample(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        import torch

        live = [i for i in self.generators if self.ended[i] is None]
        if not live:
            return scores
        device = scores.device
        # One draw per live row and step, whichever path it takes: a seed replays exactly.
        draws = {i: 1 - torch.rand((), generator=self.generators[i], device=device) for i in live}
        for filtered in (False, True):
            group = [
                i for i in live if (self.rows[i].top_k > 0 or self.rows[i].top_p < 1) is filtered
            ]
            if not group:
                continue
            index = torch.tensor(group, device=device)
            settings = [self.rows[i] for i in group]
            temperature = torch.tensor([r.temperature for r in settings], device=device)
            logits = scores[index] / temperature[:, None]
            picked = torch.stack([draws[i] for i in group])
            if filtered:
                top_k = torch.tensor([r.top_k for r in settings], device=device)
                top_p = torch.tensor([r.top_p for r in settings], device=device)
                chosen = _draw_filtered(logits, top_k, top_p, picked)
            else:
                chosen = _invert(logits.softmax(dim=-1).cumsum(dim=-1), picked)
            scores.index_fill_(0, index, float("-inf"))
            scores[index, chosen] = 0.0
        return scores

    def stop(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        import torch

        self.step += 1
        for i, token in enumerate(input_ids[:, -1].tolist()):
            if self.ended[i] is not None:
                continue
            if token in self.eos_ids:
                self.ended[i], self.lengths[i] = self.EOS, self.step
            elif self.rows[i].stops and self._hit_stop(input_ids, i):
                self.ended[i], self.lengths[i] = self.STOP_SEQUENCE, self.step
            elif self.step >= self.rows[i].max_tokens:
                self.ended[i], self.lengths[i] = self.LIMIT, self.step
        return torch.tensor([e is not None for e in self.ended], device=input_ids.device)

    def _hit_stop(self, input_ids: torch.Tensor, i: int) -> bool:
        tail = input_ids[i, -min(self.step, self.windows[i]) :].tolist()
        text = self.tokenizer.decode(tail, skip_special_tokens=True)
        return any(stop in text for stop in self.rows[i].stops)

    def finish(self, i: int, generated: list[int]) -> None:
        """Fill in row ``i``'s text, finish reason and token count."""
        row, why = self.rows[i], self.ended[i] or self.LIMIT
        tokens = generated[: self.lengths[i] or len(generated)]
        if why == self.EOS:
            tokens = tokens[:-1]
        # A constrained answer is exactly the bytes the grammar allowed: no clean-up.
        clean_up = False if row.grammar is not None else None
        text = self.tokenizer.decode(
            tokens, skip_special_tokens=True, clean_up_tokenization_spaces=clean_up
        )
        cut = min((c for c in (text.find(s) for s in row.stops) if c >= 0), default=-1)
        if cut >= 0:
            text, why = text[:cut], self.STOP_SEQUENCE
        row.text, row.token_count = text, len(tokens)
        row.finish_reason = "MAX_TOKENS" if why == self.LIMIT else "STOP"


class GrammarMask:
    """Masks each constrained row's logits to the tokens its grammar allows next.

    Built per ``model.generate`` call: one matcher per constrained row and one bitmask
    for the whole batch, allocated here and reused every step. Rows that ``controls``
    has ended are skipped.
    """

    def __init__(self, rows: list[Row], controls: RowControls, vocab_size: int) -> None:
        import xgrammar

        self.xgr, self.controls, self.vocab_size = xgrammar, controls, vocab_size
        self.matchers = {
            i: xgrammar.GrammarMatcher(row.grammar)
            for i, row in enumerate(rows)
            if row.grammar is not None
        }
        self.bitmask = xgrammar.allocate_token_bitmask(len(rows), vocab_size)
        self.filler = xgrammar.BatchGrammarMatcher()
        self.step = 0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        ended = self.controls.ended
        live = [i for i in self.matchers if ended[i] is None]
        if self.step and live:
            last = input_ids[:, -1].tolist()
            matchers = [self.matchers[i] for i in live]
            accepted = self.filler.batch_accept_token(matchers, [last[i] for i in live])
            if not all(accepted):  # cannot happen with the mask applied; free the row
                for i, ok in zip(list(live), accepted, strict=True):
                    if not ok:
                        del self.matchers[i]
                live = [i for i in live if i in self.matchers]
        self.step += 1
        if not live:
            return scores
        matchers = [self.matchers[i] for i in live]
        self.filler.batch_fill_next_token_bitmask(matchers, self.bitmask, live)
        bitmask = self.bitmask.to(scores.device, non_blocking=True)
        self.xgr.apply_token_bitmask_inplace(
            scores, bitmask, vocab_size=self.vocab_size, indices=live
        )
        return scores


# ---- sampling ------------------------------------------------------------------------


def _invert(cdf: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: per row, the first position whose mass reaches the draw."""
    import torch

    position = torch.searchsorted(cdf, (draws * cdf[:, -1])[:, None])
    return position.clamp(max=cdf.shape[-1] - 1).squeeze(1)


def _draw_filtered(
    logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, draws: torch.Tensor
) -> torch.Tensor:
    """Sample after topK, then topP over what topK kept (Hugging Face's order).

    Sorting the whole vocabulary is slow, so a row looks at its best ``max(topK, 256)``
    tokens first, then 4096, and only then at all of them, until its nucleus fits.
    """
    import torch

    vocab = logits.shape[-1]
    chosen = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    pending = torch.arange(logits.shape[0], device=logits.device)
    for width in (max(int(top_k.max()), NUCLEUS_CANDIDATES), 16 * NUCLEUS_CANDIDATES, vocab):
        rows = logits[pending]
        values, ids = rows.topk(min(width, vocab), dim=-1)
        probs, fits = _nucleus(values, rows, top_k[pending], top_p[pending])
        if width >= vocab:
            fits[:] = True
        done = fits.nonzero().squeeze(1)
        position = _invert(probs[done].cumsum(dim=-1), draws[pending[done]])
        chosen[pending[done]] = ids[done].gather(1, position[:, None]).squeeze(1)
        pending = pending[~fits]
        if not len(pending):
            break
    return chosen


def _nucleus(
    values: torch.Tensor, logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The probabilities of the best ``values`` (sorted) after topK and topP, and for each
    row whether its whole nucleus is among them."""
    import torch

    width = values.shape[-1]
    keep = torch.where(top_k > 0, top_k.clamp(max=width), width)
    beyond = torch.arange(width, device=values.device) >= keep[:, None]
    values = values.masked_fill(beyond, float("-inf"))
    total = values.logsumexp(dim=-1)
    unlimited = top_k <= 0
    if bool(unlimited.any()):  # topP alone: the mass is over the whole vocabulary
        total = torch.where(unlimited, logits.logsumexp(dim=-1), total)
    probs = (values - total[:, None]).exp()
    mass = probs.cumsum(dim=-1)
    drop = ((mass - probs) > top_p[:, None]) & (top_p < 1)[:, None]
    fits = ~unlimited | (top_p >= 1) | (mass[:, -1] >= top_p)
    return probs.masked_fill(drop, 0.0), fits
