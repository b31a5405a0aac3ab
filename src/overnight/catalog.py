"""The model table: resolving the names clients use to configured models.

A name may come as ``models/gemini-2.5-flash``, ``gemini-2.5-flash`` or a configured
model's own name. Exact names win; otherwise the most specific alias pattern
(``fnmatch``, longest pattern first) decides. What kinds of batch a model serves is
its backend's entry in ``backends.registry``, known without loading the backend.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from overnight.backends import registry
from overnight.config import ModelSettings, Settings, generation_defaults
from overnight.domain.batches import BatchKind
from overnight.domain.model_kinds import check_alias
from overnight.domain.requests import GenerationConfig
from overnight.errors import ConfigError, InvalidArgument, NotFound


@dataclass(frozen=True, slots=True)
class ModelEntry:
    name: str
    settings: ModelSettings

    @property
    def kinds(self) -> frozenset[BatchKind]:
        return registry.kinds(self.settings.backend)

    @property
    def generation_defaults(self) -> GenerationConfig:
        """What a request gets for the generationConfig fields it leaves unset
        (``config.generation``): configured, else recommended by the weights."""
        return generation_defaults(self.settings)

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
        """Raises ``NotFound`` with the known names if nothing matches, and for an image,
        video, speech or live-audio model name that only a wildcard alias for another
        kind of model matches (``domain.model_kinds``)."""
        bare = name.removeprefix("models/")
        if bare in self.models:
            return ModelEntry(bare, self.models[bare])
        matches = [p for p in self.aliases if fnmatch.fnmatchcase(bare, p)]
        if matches:
            pattern = max(matches, key=len)
            target = self.aliases[pattern]
            check_alias(name, pattern, target)
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
