"""API keys and tenants: creating keys, and authenticating a key as its tenant.

- No keys exist: a single user. Any key (or none) is accepted and everything belongs
  to the tenant ``default``. (``overnight serve`` refuses to bind beyond loopback in
  this mode unless told to; see ``cli/serve.py``.)
- Keys exist (``overnight keys create NAME``): a key is required, and each key's NAME
  is its tenant. Another tenant's files and batches answer 404, exactly as if they
  did not exist.

Only SHA-256 hashes of keys are stored.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from collections.abc import Callable

from overnight.errors import OvernightError, Unauthenticated
from overnight.store.base import KeyStore

SINGLE_USER_TENANT = "default"
KEY_PREFIX = "ovn_"


def hash_key(key: str) -> str:
    """The stored form of a key."""
    return hashlib.sha256(key.encode()).hexdigest()


class KeyService:
    """Creates keys and maps a key to its tenant.

    Whether any key exists is cached for ``CACHE_S`` seconds, so a key created by
    another process (``overnight keys create`` while serving) takes effect within
    that time; one created through this service takes effect at once.
    """

    CACHE_S = 2.0

    def __init__(self, store: KeyStore, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.clock = clock
        self._keys_checked = -math.inf
        self._have_keys = False

    async def create(self, tenant: str) -> str:
        """Make a new key for ``tenant`` and return it; only its hash is stored.

        Raises ``OvernightError`` for a tenant name that is not 1-128 letters, digits,
        '-' or '_'.
        """
        if (
            not tenant
            or len(tenant) > 128
            or not tenant.replace("-", "").replace("_", "").isalnum()
        ):
            raise OvernightError(
                f"tenant name {tenant!r} must be 1-128 letters, digits, '-' or '_'"
            )
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        await self.store.add_api_key(hash_key(key), tenant, key[:10], now=time.time())
        self._keys_checked = -math.inf
        return key

    async def any_keys(self) -> bool:
        """Whether any key exists, read now (the server's bind check)."""
        return await self.store.count_api_keys() > 0

    async def keys_configured(self) -> bool:
        """Whether any key exists, re-read at most every ``CACHE_S`` seconds."""
        now = self.clock()
        if now - self._keys_checked > self.CACHE_S:
            self._have_keys = await self.any_keys()
            self._keys_checked = now
        return self._have_keys

    async def tenant_for(self, key: str) -> str | None:
        """The tenant of ``key``; None if there is no such key."""
        return await self.store.tenant_for_key(hash_key(key))

    async def authenticate(self, key: str | None) -> str:
        """The tenant a request with ``key`` (None: no key sent) acts as.

        Raises ``Unauthenticated`` when keys exist and ``key`` is missing or unknown.
        """
        if not await self.keys_configured():
            return SINGLE_USER_TENANT
        if not key:
            raise Unauthenticated(
                "this server requires an API key: send it as the x-goog-api-key header or ?key="
            )
        tenant = await self.tenant_for(key)
        if tenant is None:
            raise Unauthenticated("API key not valid; create one with `overnight keys create NAME`")
        return tenant
