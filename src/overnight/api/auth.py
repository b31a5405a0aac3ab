"""Authentication, the HTTP side: where a request carries its API key, and which bind
addresses count as loopback.

Keys and tenants themselves are a use-case (``services/keys.py``): a request's key,
from the ``x-goog-api-key`` header or ``?key=``, is handed to
``KeyService.authenticate``, which names its tenant (``deps.TenantDep``).
"""

from __future__ import annotations

import ipaddress

from starlette.requests import HTTPConnection


def api_key(request: HTTPConnection) -> str | None:
    """The API key a request carries: ``x-goog-api-key``, else ``?key=``; None if neither."""
    return request.headers.get("x-goog-api-key") or request.query_params.get("key")


def is_loopback(host: str) -> bool:
    """Whether binding to ``host`` serves this machine only (single-user mode is safe)."""
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
