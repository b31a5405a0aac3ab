"""API keys, tenants and the bind policy, over the real ASGI app."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from tests.conftest import fake_settings

from overnight.api.auth import is_loopback
from overnight.api.server import create_app
from overnight.app import build_runtime
from overnight.cli.serve import check_bind
from overnight.errors import ConfigError
from overnight.services.keys import hash_key


async def _client(tmp_path: Path, database_url: str | None = None):  # type: ignore[no-untyped-def]
    runtime = await build_runtime(fake_settings(tmp_path, database_url))
    app = create_app(runtime.services)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
    return runtime, client


def test_single_user_mode_accepts_any_key_or_none(tmp_path: Path) -> None:
    async def go() -> None:
        runtime, client = await _client(tmp_path)
        async with client:
            assert (await client.get("/healthz")).status_code == 200
            assert not await runtime.services.keys.any_keys()
            keys = runtime.services.keys
            assert await keys.authenticate(None) == "default"
            assert await keys.authenticate("anything") == "default"
        await runtime.close()

    asyncio.run(go())


def test_configured_keys_are_required_and_name_the_tenant(
    tmp_path: Path, database_url: str
) -> None:
    async def go() -> None:
        runtime, client = await _client(tmp_path, database_url)
        key = await runtime.services.keys.create("alice")
        assert key.startswith("ovn_") and len(key) > 30
        assert await runtime.store.keys.tenant_for_key(hash_key(key)) == "alice"
        keys = runtime.services.keys
        assert await keys.authenticate(key) == "alice"  # a key created here counts at once
        from overnight.errors import Unauthenticated

        with pytest.raises(Unauthenticated, match="requires an API key"):
            await keys.authenticate(None)
        with pytest.raises(Unauthenticated, match="not valid"):
            await keys.authenticate("ovn_wrong")
        async with client:
            missing = await client.get("/v1beta/batches/x")
            assert missing.status_code == 401
            body = missing.json()["error"]
            assert body["status"] == "UNAUTHENTICATED" and "x-goog-api-key" in body["message"]
            wrong = await client.get("/v1beta/batches/x", headers={"x-goog-api-key": "nope"})
            assert wrong.status_code == 401
        await runtime.close()

    asyncio.run(go())


def test_only_hashes_are_stored(tmp_path: Path) -> None:
    async def go() -> None:
        runtime, _ = await _client(tmp_path)
        key = await runtime.services.keys.create("bob")
        await runtime.close()
        raw = (tmp_path / "data" / "overnight.db").read_bytes()
        wal = tmp_path / "data" / "overnight.db-wal"
        raw += wal.read_bytes() if wal.exists() else b""
        assert key.encode() not in raw
        assert hash_key(key).encode() in raw

    asyncio.run(go())


def test_bad_tenant_names_are_refused(tmp_path: Path) -> None:
    async def go() -> None:
        runtime, _ = await _client(tmp_path)
        from overnight.errors import OvernightError

        with pytest.raises(OvernightError, match="must be 1-128"):
            await runtime.services.keys.create("no spaces please")
        await runtime.close()

    asyncio.run(go())


def test_non_loopback_bind_without_keys_is_refused_unless_overridden(tmp_path: Path) -> None:
    async def go() -> None:
        runtime, _ = await _client(tmp_path)
        assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
        assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
        check_bind(runtime.services, "127.0.0.1")
        with pytest.raises(ConfigError, match="overnight keys create"):
            check_bind(runtime.services, "0.0.0.0")
        runtime.settings.server.allow_unauthenticated = True
        check_bind(runtime.services, "0.0.0.0")
        await runtime.close()

    asyncio.run(go())


def test_errors_are_google_style(tmp_path: Path) -> None:
    async def go() -> None:
        runtime, client = await _client(tmp_path)
        async with client:
            res = await client.get("/v1/no/such/route")
            assert res.status_code == 404
            assert res.json() == {
                "error": {
                    "code": 404,
                    "message": "no such API path; see docs/api.md for the routes Overnight serves",
                    "status": "NOT_FOUND",
                }
            }
        await runtime.close()

    asyncio.run(go())
