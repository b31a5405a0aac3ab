"""``presencePenalty`` and ``frequencyPenalty`` for the rows of one ``model.generate`` call.

Gemini's penalties (like OpenAI's and vLLM's) are additive and count the answer only:
a token the answer already holds ``n`` times has its logit lowered by
``presencePenalty`` (once, if ``n > 0``) plus ``frequencyPenalty * n``. Negative values
encourage repetition instead.

transformers ships no processor for this. Its ``RepetitionPenaltyLogitsProcessor`` is
another penalty (CTRL's: it divides or multiplies a seen token's logit, counts the
prompt unless told not to, has no frequency term) with one value for the whole batch,
while each row here carries its own request's pair. So ``Penalties`` keeps a count of
each penalized row's generated tokens, one column per vocabulary entry, updated with
the newest token at each step, and subtracts the penalty before any other processor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

# The generationConfig fields a backend honours once it applies ``Penalties``.
PENALTY_FIELDS = frozenset({"presence_penalty", "frequency_penalty"})


class PenalizedRow(Protocol):
    presence_penalty: float
    frequency_penalty: float


def penalized(rows: Sequence[PenalizedRow]) -> bool:
    """Whether any row asks for a penalty (else ``Penalties`` is not needed)."""
    return any(row.presence_penalty or row.frequency_penalty for row in rows)


class Penalties:
    """A logits processor: each penalized row's logits minus its penalties.

    ``prompt_width`` is the padded prompt length of the batch: what follows it in
    ``input_ids`` is generated. Built per ``model.generate`` call.
    """

    def __init__(self, rows: Sequence[PenalizedRow], prompt_width: int, device: Any) -> None:
        import torch

        picked = [i for i, row in enumerate(rows) if row.presence_penalty or row.frequency_penalty]
        self.index = torch.tensor(picked, dtype=torch.long, device=device)
        self.presence = torch.tensor(
            [rows[i].presence_penalty for i in picked], dtype=torch.float32, device=device
        )[:, None]
        self.frequency = torch.tensor(
            [rows[i].frequency_penalty for i in picked], dtype=torch.float32, device=device
        )[:, None]
        self.width = prompt_width
        self.seen = 0  # generated tokens already counted
        self.counts: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        import torch

        if not len(self.index):
            return scores
        if self.counts is None:
            self.counts = torch.zeros(
                (len(self.index), scores.shape[-1]), dtype=torch.float32, device=scores.device
            )
        generated = input_ids.shape[1] - self.width
        if generated > self.seen:
            new = input_ids[self.index, self.width + self.seen :]
            self.counts.scatter_add_(1, new, torch.ones_like(new, dtype=torch.float32))
            self.seen = generated
        penalty = self.frequency * self.counts + self.presence * (self.counts > 0)
        scores.index_add_(0, self.index, -penalty.to(scores.dtype))
        return scores
