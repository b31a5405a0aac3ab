"""API keys, tenants and the bind policy, over the real ASGI app."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from tests.conftest import fake_settings

from overnight.api.auth import create_key, hash_key, is_loopback
from overnight.api.server import create_app
from overnight.app import build_services
from overnight.cli.serve import check_bind
from overnight.errors import ConfigError


async def _client(tmp_path: Path, database_url: str | None = None):  # type: ignore[no-untyped-def]
    services = await build_services(fake_settings(tmp_path, database_url))
    app = create_app(services)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
    return services, client


def test_single_user_mode_accepts_any_key_or_none(tmp_path: Path) -> None:
    async def go() -> None:
        services, client = await _client(tmp_path)
        async with client:
            assert (await client.get("/healthz")).status_code == 200
            assert await services.store.keys.count_api_keys() == 0
            auth = client._transport.app.state.auth  # type: ignore[attr-defined]
            assert await auth.tenant(None) == "default"
            assert await auth.tenant("anything") == "default"
        await services.close()

    asyncio.run(go())


def test_configured_keys_are_required_and_name_the_tenant(
    tmp_path: Path, database_url: str
) -> None:
    async def go() -> None:
        services, client = await _client(tmp_path, database_url)
        key = await create_key(services.store.keys, "alice")
        assert key.startswith("ovn_") and len(key) > 30
        assert await services.store.keys.tenant_for_key(hash_key(key)) == "alice"
        auth = client._transport.app.state.auth  # type: ignore[attr-defined]
        auth._keys_checked = 0.0  # the 2 s cache: a key created just now counts at once here
        assert await auth.tenant(key) == "alice"
        from overnight.errors import Unauthenticated

        with pytest.raises(Unauthenticated, match="requires an API key"):
            await auth.tenant(None)
        with pytest.raises(Unauthenticated, match="not valid"):
            await auth.tenant("ovn_wrong")
        async with client:
            missing = await client.get("/v1beta/batches/x")
            assert missing.status_code == 401
            body = missing.json()["error"]
            assert body["status"] == "UNAUTHENTICATED" and "x-goog-api-key" in body["message"]
            wrong = await client.get("/v1beta/batches/x", headers={"x-goog-api-key": "nope"})
            assert wrong.status_code == 401
        await services.close()

    asyncio.run(go())


def test_only_hashes_are_stored(tmp_path: Path) -> None:
    async def go() -> None:
        services, _ = await _client(tmp_path)
        key = await create_key(services.store.keys, "bob")
        await services.close()
        raw = (tmp_path / "data" / "overnight.db").read_bytes()
        wal = tmp_path / "data" / "overnight.db-wal"
        raw += wal.read_bytes() if wal.exists() else b""
        assert key.encode() not in raw
        assert hash_key(key).encode() in raw

    asyncio.run(go())


def test_bad_tenant_names_are_refused(tmp_path: Path) -> None:
    async def go() -> None:
        services, _ = await _client(tmp_path)
        from overnight.errors import OvernightError

        with pytest.raises(OvernightError, match="must be 1-128"):
            await create_key(services.store.keys, "no spaces please")
        await services.close()

    asyncio.run(go())


def test_non_loopback_bind_without_keys_is_refused_unless_overridden(tmp_path: Path) -> None:
    async def go() -> None:
        services, _ = await _client(tmp_path)
        assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
        assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
        check_bind(services, "127.0.0.1")
        with pytest.raises(ConfigError, match="overnight keys create"):
            check_bind(services, "0.0.0.0")
        services.settings.server.allow_unauthenticated = True
        check_bind(services, "0.0.0.0")
        await services.close()

    asyncio.run(go())


def test_errors_are_google_style(tmp_path: Path) -> None:
    async def go() -> None:
        services, client = await _client(tmp_path)
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
        await services.close()

    asyncio.run(go())
