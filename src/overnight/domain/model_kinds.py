"""Which Gemini model names are not text models: image, video, speech, live audio, music.

The built-in alias ``gemini-*`` sends every Gemini model name to a local text model,
so that code written for Gemini runs unchanged. That is right for text models and
wrong for the others: a batch for ``gemini-2.5-flash-image`` would run on the text
model, SUCCEED, and hold nothing but failed requests. ``check_alias`` lets the
catalog refuse such a name at once instead (at batch create and on every synchronous
call), naming the model, why, and what to configure.

A name is served as usual when a model of that name is configured, when an alias
names it exactly, or when the alias pattern that matches it is one for its own kind
(``"imagen-*" = "my-imagen"``).
"""

from __future__ import annotations

from overnight.errors import NotFound

_WILDCARDS = frozenset("*?[")


def media_kind(name: str) -> str | None:
    """What a model named ``name`` produces when that is not text: ``"images"``,
    ``"video"``, ``"speech"``, ``"live audio"`` or ``"music"``; None for a text or
    embedding model. Works on alias patterns too (``imagen-*``, ``*-tts``)."""
    words = [w.strip("*?[]") for w in name.lower().removeprefix("models/").split("-")]
    first = words[0]
    if first.startswith("imagen") or "image" in words:
        return "images"
    if first == "veo":
        return "video"
    if "tts" in words:
        return "speech"
    if "live" in words or "audio" in words:
        return "live audio"
    if first == "lyria":
        return "music"
    return None


def check_alias(name: str, pattern: str, target: str) -> None:
    """Raise ``NotFound`` if ``name``, matched by alias ``pattern`` (which names model
    ``target``), is a model of another kind than the pattern stands for."""
    kind = media_kind(name)
    if kind is None or not _WILDCARDS & set(pattern) or media_kind(pattern) == kind:
        return
    bare = name.removeprefix("models/")
    raise NotFound(
        f"model {name!r} generates {kind}, and no such model is configured here: the "
        f"alias pattern {pattern!r} serves Gemini names with {target}, which cannot "
        f"produce {kind}, so every request would fail. Configure a model that generates "
        f'{kind} under that name ([models."{bare}"] in overnight.toml, e.g. with '
        'backend = "gemini" to relay it to the Gemini API), or ask for a text model '
        "such as gemini-2.5-flash."
    )
