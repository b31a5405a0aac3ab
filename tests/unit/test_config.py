"""Settings: defaults, the TOML file, OVERNIGHT_* variables, flags, and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from overnight.config import Settings, builtin_aliases, builtin_models, load_settings
from overnight.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _no_stray_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in an empty directory, so a developer's ./overnight.toml cannot leak in."""
    monkeypatch.chdir(tmp_path)


def test_defaults_derive_from_data_dir(tmp_path: Path) -> None:
    settings = load_settings(environ={}, overrides={"data_dir": str(tmp_path / "d")})
    assert settings.data_dir == tmp_path / "d"
    assert settings.database_url is None
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'd' / 'overnight.db'}"
    assert settings.resolved_blob_dir == tmp_path / "d" / "blobs"
    assert settings.resolved_model_cache_dir == tmp_path / "d" / "models"
    assert settings.engine.shard_size == 256
    assert settings.engine.shard_max_bytes == 8 * 1024 * 1024


def test_default_data_dir_follows_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert load_settings(environ={}).data_dir == tmp_path / "xdg" / "overnight"


def test_data_dir_expands_user() -> None:
    settings = load_settings(environ={}, overrides={"data_dir": "~/ovn"})
    assert settings.data_dir == Path.home() / "ovn"


def test_blob_url_file_scheme_and_path(tmp_path: Path) -> None:
    as_url = load_settings(environ={}, overrides={"blob_url": f"file://{tmp_path}/b"})
    assert as_url.resolved_blob_dir == tmp_path / "b"
    as_path = load_settings(environ={}, overrides={"blob_url": str(tmp_path / "c")})
    assert as_path.resolved_blob_dir == tmp_path / "c"


def test_blob_url_remote_scheme_is_a_config_error() -> None:
    settings = load_settings(environ={}, overrides={"blob_url": "s3://bucket/x"})
    with pytest.raises(ConfigError, match="s3://bucket/x"):
        _ = settings.resolved_blob_dir


def test_toml_file_is_loaded(tmp_path: Path) -> None:
    path = write(
        tmp_path / "custom.toml",
        'data_dir = "/srv/ovn"\n'
        'database_url = "postgresql+psycopg://u@h/db"\n'
        "[engine]\nshard_size = 7\nworkers = 3\n",
    )
    settings = load_settings(path, environ={})
    assert settings.data_dir == Path("/srv/ovn")
    assert settings.resolved_database_url == "postgresql+psycopg://u@h/db"
    assert settings.engine.shard_size == 7
    assert settings.engine.workers == 3
    assert settings.engine.lease_seconds == 60.0  # untouched fields keep defaults


def test_overnight_config_variable_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "elsewhere.toml", "[engine]\nshard_size = 9\n")
    settings = load_settings(environ={"OVERNIGHT_CONFIG": str(path)})
    assert settings.engine.shard_size == 9


def test_overnight_toml_in_working_directory_is_found(tmp_path: Path) -> None:
    write(tmp_path / "overnight.toml", "[engine]\nshard_size = 11\n")
    assert load_settings(environ={}).engine.shard_size == 11


def test_env_overrides_top_level_and_nested(tmp_path: Path) -> None:
    settings = load_settings(
        environ={
            "OVERNIGHT_DATA_DIR": str(tmp_path / "env"),
            "OVERNIGHT_ENGINE__SHARD_SIZE": "5",
            "OVERNIGHT_ENGINE__LEASE_SECONDS": "2.5",
        }
    )
    assert settings.data_dir == tmp_path / "env"
    assert settings.engine.shard_size == 5
    assert settings.engine.lease_seconds == 2.5


def test_env_can_define_a_model() -> None:
    settings = load_settings(
        environ={
            "OVERNIGHT_MODELS__TINY__BACKEND": "fake",
            "OVERNIGHT_MODELS__TINY__MAX_BATCH_SIZE": "4",
        }
    )
    assert settings.models["tiny"].backend == "fake"
    assert settings.models["tiny"].max_batch_size == 4


def test_unrelated_overnight_variables_are_ignored() -> None:
    # CI exports these and the CLI inherits them; they are not settings.
    settings = load_settings(
        environ={
            "OVERNIGHT_TEST_POSTGRES_URL": "postgresql://x",
            "OVERNIGHT_REQUIRE_POSTGRES": "1",
            "OVERNIGHT_ENGINE__WORKERS": "4",
            "OTHER_ENGINE__WORKERS": "9",
        }
    )
    assert settings.engine.workers == 4


def test_precedence_file_then_env_then_overrides(tmp_path: Path) -> None:
    path = write(
        tmp_path / "p.toml",
        "[engine]\nshard_size = 1\nworkers = 1\nlease_seconds = 1.0\n",
    )
    settings = load_settings(
        path,
        environ={"OVERNIGHT_ENGINE__WORKERS": "2", "OVERNIGHT_ENGINE__LEASE_SECONDS": "2"},
        overrides={"engine": {"lease_seconds": 3.0}},
    )
    assert settings.engine.shard_size == 1  # file only
    assert settings.engine.workers == 2  # env beats file
    assert settings.engine.lease_seconds == 3.0  # overrides beat env


def test_none_overrides_do_not_mask_lower_layers(tmp_path: Path) -> None:
    settings = load_settings(
        environ={"OVERNIGHT_DATABASE_URL": "sqlite:///env.db"},
        overrides={"database_url": None, "data_dir": str(tmp_path)},
    )
    assert settings.database_url == "sqlite:///env.db"


def test_models_and_aliases_merge_over_builtins(tmp_path: Path) -> None:
    path = write(
        tmp_path / "m.toml",
        "[models.mine]\n"
        'backend = "fake"\n'
        'description = "a test model"\n'
        "[models.smollm2-135m-instruct]\n"
        'backend = "transformers"\n'
        "max_output_tokens = 99\n"
        "[aliases]\n"
        '"gemini-2.5-pro" = "mine"\n',
    )
    settings = load_settings(path, environ={})
    models = settings.all_models()
    assert set(builtin_models()) <= set(models)
    assert models["mine"].backend == "fake"
    assert models["smollm2-135m-instruct"].max_output_tokens == 99
    assert models["all-minilm-l6-v2"] == builtin_models()["all-minilm-l6-v2"]
    aliases = settings.all_aliases()
    assert aliases["gemini-2.5-pro"] == "mine"
    for pattern, target in builtin_aliases().items():
        assert aliases[pattern] == target


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "broken.toml", "[engine\nshard_size = 1\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert str(path) in info.value.message
    assert "not valid TOML" in info.value.message


def test_invalid_field_names_the_file_and_field(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.toml", '[engine]\nshard_size = "many"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert str(path) in info.value.message
    assert "engine.shard_size" in info.value.message


def test_out_of_range_value_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path / "zero.toml", "[engine]\nworkers = 0\n")
    with pytest.raises(ConfigError, match=r"engine\.workers"):
        load_settings(path, environ={})


def test_unknown_field_in_a_section_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path / "typo.toml", "[engine]\nshard_sise = 3\n")
    with pytest.raises(ConfigError, match=r"engine\.shard_sise"):
        load_settings(path, environ={})


def test_invalid_env_value_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"engine\.shard_size"):
        load_settings(environ={"OVERNIGHT_ENGINE__SHARD_SIZE": "lots"})


def test_model_without_backend_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path / "nobackend.toml", '[models.x]\npath = "/m"\n')
    with pytest.raises(ConfigError, match=r"models\.x\.backend"):
        load_settings(path, environ={})


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"nope\.toml"):
        load_settings(missing, environ={})


def test_missing_overnight_config_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "gone.toml"
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"OVERNIGHT_CONFIG": str(missing)})
    assert "OVERNIGHT_CONFIG" in info.value.message
    assert str(missing) in info.value.message


def test_settings_rejects_unknown_top_level_keys() -> None:
    with pytest.raises(ConfigError, match="shard_size"):
        load_settings(environ={}, overrides={"shard_size": 3})
    assert "shard_size" not in Settings.model_fields


def test_client_variables_do_not_disturb_the_settings() -> None:
    from overnight.config import load_settings

    settings = load_settings(
        environ={
            "OVERNIGHT_SERVER_URL": "http://gpu-box:8080",
            "OVERNIGHT_API_KEY": "ovn_x",
            "OVERNIGHT_SERVER__PORT": "9000",
        }
    )
    assert settings.server.port == 9000


def test_a_models_options_are_checked_against_its_backend(tmp_path: Path) -> None:
    path = write(
        tmp_path / "opts.toml",
        '[models.mine]\nbackend = "transformers"\noptions = { thread = 2 }\n',
    )
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    message = info.value.message
    assert str(path) in message
    assert "models.mine: options.thread: unknown transformers option (did you mean threads?)" in (
        message
    )
    assert "known transformers options: threads, model_version" in message


def test_a_bad_option_value_says_what_is_allowed() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(
            environ={},
            overrides={"models": {"v": {"backend": "vllm", "options": {"cpu_allocator": "x"}}}},
        )
    assert "models.v: options.cpu_allocator: Input should be 'auto', 'tcmalloc' or 'system'" in (
        info.value.message
    )
    with pytest.raises(ConfigError, match=r"models\.t: options\.threads: must be \"auto\""):
        load_settings(
            environ={
                "OVERNIGHT_MODELS__T__BACKEND": "transformers",
                "OVERNIGHT_MODELS__T__OPTIONS__THREADS": "many",
            }
        )


def test_options_from_the_environment_are_typed() -> None:
    settings = load_settings(
        environ={
            "OVERNIGHT_MODELS__ECHO__BACKEND": "fake",
            "OVERNIGHT_MODELS__ECHO__OPTIONS__LATENCY_S": "0.25",
        }
    )
    assert settings.models["echo"].options == {"latency_s": "0.25"}  # kept as given
    from overnight.backends.options import FakeOptions

    assert FakeOptions.parse("echo", settings.models["echo"].options).latency_s == 0.25


def test_an_unknown_backend_is_named_with_the_known_ones() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={}, overrides={"models": {"x": {"backend": "tensorrt"}}})
    assert "models.x: backend: unknown backend 'tensorrt'; choose one of fake, gemini" in (
        info.value.message
    )


def test_every_builtin_model_has_valid_options() -> None:
    for name, model in builtin_models().items():
        assert Settings(models={name: model}).models[name].backend == model.backend
