"""The backend registry: one entry per backend, known without importing the backend."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from overnight.backends.options import BackendOptions
from overnight.backends.registry import BACKENDS, BackendEntry, create_backend, entry, kinds
from overnight.config import ModelSettings
from overnight.domain.batches import BatchKind
from overnight.errors import ConfigError

ENTRIES = list(BACKENDS.values())
HEAVY = ("torch", "transformers", "sentence_transformers", "vllm", "httpx", "aiohttp", "numpy")


def settings_for(backend: str, **options: object) -> ModelSettings:
    upstream = {"base_url": "http://127.0.0.1:9/v1"} if backend in ("openai", "gemini") else {}
    return ModelSettings(backend=backend, **upstream).model_copy(update={"options": options})


def imported_after(code: str) -> set[str]:
    """The heavy top-level modules a fresh interpreter holds after running ``code``."""
    probe = f"{code}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()
    return {name for name in HEAVY if name in out}


def test_the_registry_and_options_import_light() -> None:
    code = "import overnight.backends.registry, overnight.backends.options, overnight.catalog"
    assert imported_after(code) == set()


def test_building_every_backend_loads_nothing_heavy(tmp_path: Path) -> None:
    """A backend's module is imported on first use, and building it loads no model."""
    lines = ["from pathlib import Path", "from overnight.backends.registry import BACKENDS"]
    lines.append("from overnight.config import ModelSettings")
    for name in BACKENDS:
        base_url = ', base_url="http://127.0.0.1:9/v1"' if name in ("openai", "gemini") else ""
        lines.append(
            f'BACKENDS["{name}"].create("m", ModelSettings(backend="{name}"{base_url}), '
            f'Path("{tmp_path}"))'
        )
    assert imported_after("\n".join(lines)) == set()


@pytest.mark.parametrize("item", ENTRIES, ids=lambda e: e.name)
def test_each_entry_names_a_backend_class_it_imports_lazily(item: BackendEntry) -> None:
    module, _, attr = item.target.partition(":")
    assert module.startswith("overnight.backends.") and attr
    cls = item.load()
    assert cls.__name__ == attr and cls.__module__ == module
    for method in ("start", "generate", "embed", "count_tokens", "close"):
        assert callable(getattr(cls, method, None)), f"{attr} has no {method}"


@pytest.mark.parametrize("item", ENTRIES, ids=lambda e: e.name)
def test_each_entry_declares_its_kinds_and_options(item: BackendEntry) -> None:
    assert item.kinds and item.kinds <= {BatchKind.GENERATE, BatchKind.EMBED}
    assert isinstance(item.kinds, frozenset)
    assert kinds(item.name) == item.kinds
    assert issubclass(item.options, BackendOptions)
    assert item.options.backend == item.name
    assert item.options.model_config.get("extra") == "forbid"
    assert item.summary and item.extra in (None, "local", "vllm")
    missing = [n for n, f in item.options.model_fields.items() if not f.description]
    assert not missing, f"{item.name} options without a description: {missing}"


@pytest.mark.parametrize("item", ENTRIES, ids=lambda e: e.name)
def test_options_reject_unknown_keys_naming_model_option_and_known(item: BackendEntry) -> None:
    with pytest.raises(ConfigError) as info:
        item.options.parse("my-model", {"no_such_option": 1})
    message = info.value.message
    assert message.startswith("model 'my-model': options.no_such_option: unknown ")
    assert f"unknown {item.name} option" in message
    assert f"known {item.name} options: " + ", ".join(item.options.model_fields) in message


@pytest.mark.parametrize("item", ENTRIES, ids=lambda e: e.name)
def test_building_a_backend_checks_its_options(item: BackendEntry, tmp_path: Path) -> None:
    """Settings made in code skip the settings file's check; the backend checks again."""
    with pytest.raises(ConfigError, match=r"model 'm': options\.bogus: unknown"):
        create_backend("m", settings_for(item.name, bogus=True), tmp_path)
    backend = create_backend("m", settings_for(item.name), tmp_path)
    caps = backend.capabilities
    pairs = ((BatchKind.GENERATE, caps.generate), (BatchKind.EMBED, caps.embed))
    served = {kind for kind, on in pairs if on}
    assert served and served <= item.kinds


def test_a_close_suggestion_is_offered() -> None:
    with pytest.raises(ConfigError, match=r"options\.latency: unknown fake option \(did you mean"):
        entry("fake").options.parse("m", {"latency": 1})


def test_an_unknown_backend_is_a_config_error_listing_the_known(tmp_path: Path) -> None:
    settings = ModelSettings(backend="fake").model_copy(update={"backend": "tensorrt"})
    with pytest.raises(ConfigError) as info:
        create_backend("m", settings, tmp_path)
    assert info.value.message == (
        "model 'm': unknown backend 'tensorrt'; choose one of " + ", ".join(sorted(BACKENDS))
    )
    assert kinds("tensorrt") == {BatchKind.GENERATE}
