"""The model catalog: exact names, then the most specific alias."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from overnight.catalog import ModelCatalog
from overnight.config import load_settings
from overnight.domain.batches import BatchKind
from overnight.errors import ConfigError, InvalidArgument, NotFound


def catalog(tmp_path: Path, **overrides: Any) -> ModelCatalog:
    return ModelCatalog(
        load_settings(environ={}, overrides={"data_dir": str(tmp_path), **overrides})
    )


def test_exact_name(tmp_path: Path) -> None:
    entry = catalog(tmp_path).resolve("smollm2-135m-instruct")
    assert entry.name == "smollm2-135m-instruct"
    assert entry.settings.backend == "transformers"
    assert entry.kinds == {BatchKind.GENERATE}


def test_models_prefix_is_stripped(tmp_path: Path) -> None:
    assert catalog(tmp_path).resolve("models/all-minilm-l6-v2").name == "all-minilm-l6-v2"
    assert catalog(tmp_path).resolve("models/gemini-2.5-flash").name == "smollm2-135m-instruct"


@pytest.mark.parametrize(
    ("name", "target"),
    [
        ("gemini-embedding-001", "all-minilm-l6-v2"),
        ("models/gemini-embedding-exp-03-07", "all-minilm-l6-v2"),
        ("text-embedding-004", "all-minilm-l6-v2"),
        ("embedding-001", "all-minilm-l6-v2"),
        ("gemini-2.5-flash", "smollm2-135m-instruct"),
        ("gemini-2.0-flash-lite", "smollm2-135m-instruct"),
    ],
)
def test_most_specific_alias_wins(tmp_path: Path, name: str, target: str) -> None:
    assert catalog(tmp_path).resolve(name).name == target


def test_configured_alias_more_specific_than_builtin(tmp_path: Path) -> None:
    cat = catalog(
        tmp_path,
        models={"echo": {"backend": "fake"}},
        aliases={"gemini-2.5-pro*": "echo"},
    )
    assert cat.resolve("gemini-2.5-pro-preview").name == "echo"
    assert cat.resolve("gemini-2.5-flash").name == "smollm2-135m-instruct"


def test_exact_model_name_beats_alias(tmp_path: Path) -> None:
    cat = catalog(tmp_path, models={"gemini-2.5-flash": {"backend": "fake"}})
    entry = cat.resolve("models/gemini-2.5-flash")
    assert entry.name == "gemini-2.5-flash"
    assert entry.settings.backend == "fake"


def test_alias_matching_is_case_sensitive(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        catalog(tmp_path).resolve("GEMINI-2.5-FLASH")


def test_unknown_model_lists_known_models(tmp_path: Path) -> None:
    with pytest.raises(NotFound) as info:
        catalog(tmp_path).resolve("models/llama-3")
    message = info.value.message
    assert "'models/llama-3'" in message
    assert "all-minilm-l6-v2" in message
    assert "smollm2-135m-instruct" in message
    assert "[models.NAME]" in message


def test_resolve_for_checks_the_kind(tmp_path: Path) -> None:
    cat = catalog(tmp_path)
    assert cat.resolve_for("gemini-embedding-001", BatchKind.EMBED).name == "all-minilm-l6-v2"
    with pytest.raises(InvalidArgument, match="cannot produce embeddings"):
        cat.resolve_for("gemini-2.5-flash", BatchKind.EMBED)
    with pytest.raises(InvalidArgument, match="cannot generate content"):
        cat.resolve_for("all-minilm-l6-v2", BatchKind.GENERATE)


def test_fake_backend_serves_both_kinds(tmp_path: Path) -> None:
    cat = catalog(tmp_path, models={"echo": {"backend": "fake"}})
    assert cat.resolve_for("echo", BatchKind.GENERATE).name == "echo"
    assert cat.resolve_for("echo", BatchKind.EMBED).name == "echo"
    assert cat.resolve("echo").default_kind is BatchKind.GENERATE
    assert cat.resolve("all-minilm-l6-v2").default_kind is BatchKind.EMBED


def test_default_for_each_kind(tmp_path: Path) -> None:
    cat = catalog(tmp_path)
    assert cat.default_for(BatchKind.GENERATE).name == "smollm2-135m-instruct"
    assert cat.default_for(BatchKind.EMBED).name == "all-minilm-l6-v2"


def test_alias_to_missing_model_is_rejected(tmp_path: Path) -> None:
    # A settings mistake, found at start-up: the CLI exits 2 as for any ConfigError.
    with pytest.raises(ConfigError) as info:
        catalog(tmp_path, aliases={"gpt-*": "no-such-model"})
    assert "'gpt-*'" in info.value.message
    assert "'no-such-model'" in info.value.message


def test_kinds_come_from_the_backend_registry(tmp_path: Path) -> None:
    from overnight.backends.registry import BACKENDS

    models = {f"m-{name}": {"backend": name} for name in BACKENDS}
    for model in ("m-openai", "m-gemini"):
        models[model]["base_url"] = "http://127.0.0.1:9/v1"
    cat = catalog(tmp_path, models=models)
    for name, entry in BACKENDS.items():
        assert cat.resolve(f"m-{name}").kinds == entry.kinds
