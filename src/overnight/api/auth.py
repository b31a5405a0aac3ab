"""API keys and tenants.

- No keys configured and bound to loopback: a single user. Any key (or none) is
  accepted and everything belongs to the tenant ``default``.
- Keys configured (``overnight keys create NAME``): ``x-goog-api-key`` or ``?key=`` is
  required, and each key's NAME is its tenant. Another tenant's files and batches
  answer 404, exactly as if they did not exist.

Only SHA-256 hashes of keys are stored.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
import time

from overnight.errors import OvernightError, Unauthenticated
from overnight.store.base import KeyStore

SINGLE_USER_TENANT = "default"
KEY_PREFIX = "ovn_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


async def create_key(store: KeyStore, tenant: str) -> str:
    """Make a new key for ``tenant``; only its hash is stored. Returns the key."""
    if not tenant or len(tenant) > 128 or not tenant.replace("-", "").replace("_", "").isalnum():
        raise OvernightError(f"tenant name {tenant!r} must be 1-128 letters, digits, '-' or '_'")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    await store.add_api_key(hash_key(key), tenant, key[:10], now=time.time())
    return key


class Authenticator:
    """Maps a request's API key to a tenant. Keys created while serving take effect at once."""

    CACHE_S = 2.0

    def __init__(self, store: KeyStore) -> None:
        self.store = store
        self._keys_checked = 0.0
        self._have_keys = False

    async def keys_configured(self) -> bool:
        now = time.monotonic()
        if now - self._keys_checked > self.CACHE_S:
            self._have_keys = await self.store.count_api_keys() > 0
            self._keys_checked = now
        return self._have_keys

    async def tenant(self, key: str | None) -> str:
        if not await self.keys_configured():
            return SINGLE_USER_TENANT
        if not key:
            raise Unauthenticated(
                "this server requires an API key: send it as the x-goog-api-key header or ?key="
            )
        tenant = await self.store.tenant_for_key(hash_key(key))
        if tenant is None:
            raise Unauthenticated("API key not valid; create one with `overnight keys create NAME`")
        return tenant
