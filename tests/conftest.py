"""Shared fixtures: real SQLite and PostgreSQL stores, settings over a temp data dir.

PostgreSQL tests use ``OVERNIGHT_TEST_POSTGRES_URL``. Without it, or without a
reachable server, they are skipped with the reason, unless
``OVERNIGHT_REQUIRE_POSTGRES=1`` (set by .ci/run), which turns a skip into a failure.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

PG_ENV = "OVERNIGHT_TEST_POSTGRES_URL"


def _pg_base_url() -> str:
    url = os.environ.get(PG_ENV)
    if not url:
        reason = f"PostgreSQL tests need {PG_ENV} (e.g. postgresql://postgres@127.0.0.1:5432/test)"
        if os.environ.get("OVERNIGHT_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return url


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh schema on the test PostgreSQL server, dropped afterwards."""
    base = _pg_base_url()
    try:
        import psycopg
    except ImportError:
        pytest.fail("PostgreSQL tests need psycopg: pip install -e '.[postgres]'")
    plain = base.replace("postgresql+psycopg://", "postgresql://")
    schema = f"t_{secrets.token_hex(6)}"
    try:
        with psycopg.connect(plain, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
    except psycopg.OperationalError as exc:
        reason = f"PostgreSQL at {plain} is not reachable: {exc}"
        if os.environ.get("OVERNIGHT_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    sep = "&" if "?" in plain else "?"
    yield f"{plain}{sep}options=-csearch_path%3D{schema}"
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using this runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'overnight.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture(scope="session")
def model_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One converted-weights cache for the whole session (the GGUF converts once)."""
    shared = os.environ.get("OVERNIGHT_TEST_MODEL_CACHE")
    return Path(shared) if shared else tmp_path_factory.mktemp("model-cache")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def fake_settings(tmp_path: Path, database_url: str | None = None, **engine: Any) -> Any:
    from overnight.config import load_settings

    return load_settings(
        environ={},
        overrides={
            "data_dir": str(tmp_path / "data"),
            "database_url": database_url,
            "engine": {"heartbeat_seconds": 0.2, "poll_seconds": 0.02, **engine},
            "models": {
                "echo": {"backend": "fake", "options": {"max_batch_size": 8}},
                "flaky": {
                    "backend": "fake",
                    "options": {"fail_marker": "BOOM", "max_batch_size": 8},
                },
            },
        },
    )
