"""Image, video, speech and live-audio model names are not served by a text model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from overnight.catalog import ModelCatalog
from overnight.config import load_settings
from overnight.domain.model_kinds import media_kind
from overnight.errors import NotFound

MEDIA_MODELS = {
    "gemini-2.5-flash-image": "images",
    "gemini-2.5-flash-image-preview": "images",
    "gemini-2.0-flash-preview-image-generation": "images",
    "gemini-3-pro-image-preview": "images",
    "imagen-4.0-generate-001": "images",
    "veo-3.0-generate-preview": "video",
    "gemini-2.5-flash-preview-tts": "speech",
    "gemini-2.5-pro-preview-tts": "speech",
    "gemini-live-2.5-flash-preview": "live audio",
    "gemini-2.0-flash-live-001": "live audio",
    "gemini-2.5-flash-native-audio-preview-09-2025": "live audio",
    "lyria-realtime-exp": "music",
}
TEXT_MODELS = [
    "gemini-2.5-flash",
    "gemini-2.5-flash-lite",
    "gemini-3-pro-preview",
    "gemini-2.0-flash",
    "gemini-embedding-001",
    "gemini-2.5-computer-use-preview-10-2025",
    "smollm2-135m-instruct",
]


def catalog(tmp_path: Path, **overrides: Any) -> ModelCatalog:
    return ModelCatalog(
        load_settings(environ={}, overrides={"data_dir": str(tmp_path), **overrides})
    )


@pytest.mark.parametrize(("name", "kind"), MEDIA_MODELS.items())
def test_media_names_are_told_apart(name: str, kind: str) -> None:
    assert media_kind(name) == kind
    assert media_kind(f"models/{name}") == kind


@pytest.mark.parametrize("name", TEXT_MODELS)
def test_text_names_are_text(name: str) -> None:
    assert media_kind(name) is None


@pytest.mark.parametrize(("pattern", "kind"), [("imagen-*", "images"), ("*-tts", "speech")])
def test_patterns_have_kinds_too(pattern: str, kind: str) -> None:
    assert media_kind(pattern) == kind
    assert media_kind("gemini-*") is None


@pytest.mark.parametrize(("name", "kind"), MEDIA_MODELS.items())
def test_builtin_gemini_alias_refuses_media_models(tmp_path: Path, name: str, kind: str) -> None:
    cat = catalog(tmp_path)
    if not name.startswith("gemini-"):
        with pytest.raises(NotFound, match="is not configured"):
            cat.resolve(name)
        return
    with pytest.raises(NotFound) as info:
        cat.resolve(f"models/{name}")
    message = info.value.message
    assert f"model 'models/{name}' generates {kind}" in message
    assert "'gemini-*'" in message and "smollm2-135m-instruct" in message
    assert f'[models."{name}"]' in message
    assert "gemini-2.5-flash" in message


def test_text_names_still_resolve_through_the_alias(tmp_path: Path) -> None:
    cat = catalog(tmp_path)
    assert cat.resolve("gemini-2.5-flash").name == "smollm2-135m-instruct"
    assert cat.resolve("gemini-embedding-001").name == "all-minilm-l6-v2"


def test_a_configured_model_of_that_name_is_served(tmp_path: Path) -> None:
    cat = catalog(tmp_path, models={"gemini-2.5-flash-image": {"backend": "fake"}})
    assert cat.resolve("models/gemini-2.5-flash-image").name == "gemini-2.5-flash-image"


def test_an_exact_alias_or_a_pattern_of_the_same_kind_is_served(tmp_path: Path) -> None:
    cat = catalog(
        tmp_path,
        models={"painter": {"backend": "fake"}},
        aliases={"gemini-2.5-flash-image": "painter", "imagen-*": "painter"},
    )
    assert cat.resolve("gemini-2.5-flash-image").name == "painter"
    assert cat.resolve("imagen-4.0-generate-001").name == "painter"
    with pytest.raises(NotFound, match="generates speech"):
        cat.resolve("gemini-2.5-flash-preview-tts")
