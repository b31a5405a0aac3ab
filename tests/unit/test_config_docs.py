"""docs/configuration.md is generated from config.py and the backends' option models,
and must stay in step with them."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from overnight.backends.registry import BACKENDS
from overnight.catalog import ModelCatalog
from overnight.config import EngineSettings, ModelSettings, Settings, load_settings
from overnight.config_docs import EXAMPLE_TOML, main, render_settings_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
MODELS: list[type[BaseModel]] = [
    Settings,
    EngineSettings,
    ModelSettings,
    *(entry.options for entry in BACKENDS.values()),
]


def test_checked_in_docs_match_the_generator() -> None:
    assert DOC.is_file(), "docs/configuration.md is missing; run: python -m overnight.config_docs"
    assert DOC.read_text(encoding="utf-8") == render_settings_markdown(), (
        "docs/configuration.md is out of date; run: python -m overnight.config_docs"
    )


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_every_setting_has_a_description(model: type[BaseModel]) -> None:
    missing = [name for name, info in model.model_fields.items() if not info.description]
    assert not missing, f"{model.__name__} fields without a description: {missing}"


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_every_setting_is_documented(model: type[BaseModel]) -> None:
    text = render_settings_markdown()
    for name, info in model.model_fields.items():
        assert f"| `{name}` |" in text
        assert info.description is not None
        assert info.description.replace("|", "\\|") in text


def test_env_names_are_documented() -> None:
    text = render_settings_markdown()
    assert "`OVERNIGHT_DATA_DIR`" in text
    assert "`OVERNIGHT_ENGINE__SHARD_SIZE`" in text
    assert "`OVERNIGHT_MODELS__<NAME>__BACKEND`" in text


def test_rendering_is_machine_independent() -> None:
    assert str(Path.home()) not in render_settings_markdown()


def test_example_toml_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "overnight.toml"
    path.write_text(EXAMPLE_TOML, encoding="utf-8")
    settings = load_settings(path, environ={})
    assert settings.engine.workers == 4
    catalog = ModelCatalog(settings)
    assert catalog.resolve("models/gemini-2.5-pro").name == "qwen2.5-0.5b-instruct"
    assert catalog.resolve("models/gemini-2.5-flash").name == "smollm2-135m-instruct"
    assert catalog.resolve("gemini-embedding-001").name == "all-minilm-l6-v2"


def test_main_writes_the_file(tmp_path: Path) -> None:
    target = tmp_path / "out" / "configuration.md"
    assert main(["config_docs", str(target)]) == 0
    assert target.read_text(encoding="utf-8") == render_settings_markdown()


def test_every_backend_has_its_options_table() -> None:
    text = render_settings_markdown()
    for name, entry in BACKENDS.items():
        assert f"| `{name}` |" in text, f"backend {name} is missing from the Backends table"
        section = text.split(f"### `{name}` options", 1)[1].split("\n### ", 1)[0]
        for option, info in entry.options.model_fields.items():
            assert f"| `{option}` |" in section, f"{name} option {option} is undocumented"
            assert info.description is not None
            assert info.description.replace("|", "\\|") in section


def test_backend_option_env_names_are_documented() -> None:
    assert "`OVERNIGHT_MODELS__<NAME>__OPTIONS__<OPTION>`" in render_settings_markdown()
