"""The model table: resolving the names clients use to configured models.

A name may come as ``models/gemini-2.5-flash``, ``gemini-2.5-flash`` or a configured
model's own name. Exact names win; otherwise the most specific alias pattern
(``fnmatch``, longest pattern first) decides.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from overnight.config import ModelSettings, Settings
from overnight.domain.batches import BatchKind
from overnight.errors import ConfigError, InvalidArgument, NotFound

# What each backend can do, known without loading it.
BACKEND_KINDS: dict[str, frozenset[BatchKind]] = {
    "transformers": frozenset({BatchKind.GENERATE}),
    "sentence-transformers": frozenset({BatchKind.EMBED}),
    "fake": frozenset({BatchKind.GENERATE, BatchKind.EMBED}),
    "vllm": frozenset({BatchKind.GENERATE, BatchKind.EMBED}),
    "openai": frozenset({BatchKind.GENERATE, BatchKind.EMBED}),
    "gemini": frozenset({BatchKind.GENERATE, BatchKind.EMBED}),
}


@dataclass(frozen=True, slots=True)
class ModelEntry:
    name: str
    settings: ModelSettings

    @property
    def kinds(self) -> frozenset[BatchKind]:
        return BACKEND_KINDS.get(self.settings.backend, frozenset({BatchKind.GENERATE}))

    @property
    def default_kind(self) -> BatchKind:
        return BatchKind.GENERATE if BatchKind.GENERATE in self.kinds else BatchKind.EMBED


class ModelCatalog:
    def __init__(self, settings: Settings) -> None:
        self.models = settings.all_models()
        self.aliases = settings.all_aliases()
        for pattern, target in self.aliases.items():
            if target not in self.models:
                raise ConfigError(
                    f"alias {pattern!r} points at {target!r}, which is not a configured model"
                )

    def resolve(self, name: str) -> ModelEntry:
        """Raises ``NotFound`` with the known names if nothing matches."""
        bare = name.removeprefix("models/")
        if bare in self.models:
            return ModelEntry(bare, self.models[bare])
        matches = [p for p in self.aliases if fnmatch.fnmatchcase(bare, p)]
        if matches:
            target = self.aliases[max(matches, key=len)]
            return ModelEntry(target, self.models[target])
        raise NotFound(
            f"model {name!r} is not configured; known models: {', '.join(sorted(self.models))} "
            f"(aliases: {', '.join(sorted(self.aliases))}). Add it under [models.NAME] in overnight.toml."
        )

    def resolve_for(self, name: str, kind: BatchKind) -> ModelEntry:
        """Resolve and check the model can run this kind of batch."""
        entry = self.resolve(name)
        if kind not in entry.kinds:
            verb = "generate content" if kind is BatchKind.GENERATE else "produce embeddings"
            raise InvalidArgument(
                f"model {name!r} (served by {entry.name}, backend {entry.settings.backend}) cannot {verb}"
            )
        return entry

    def default_for(self, kind: BatchKind) -> ModelEntry:
        builtin = "smollm2-135m-instruct" if kind is BatchKind.GENERATE else "all-minilm-l6-v2"
        return self.resolve_for(builtin, kind)
