"""Request-scoped dependencies: the services, the caller's tenant, the public base URL."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request

from overnight.api.auth import api_key
from overnight.errors import NotFound
from overnight.services.container import ServiceSet

API_VERSIONS = frozenset({"v1", "v1beta", "v1alpha"})


def get_services(request: Request) -> ServiceSet:
    services: ServiceSet = request.app.state.services
    return services


async def get_tenant(request: Request) -> str:
    """The caller's tenant, from its API key (``KeyService.authenticate``)."""
    return await get_services(request).keys.authenticate(api_key(request))


def check_version(
    version: Annotated[
        str,
        Path(
            description="API version: v1 (SDK 3.x), v1beta (older SDKs, the docs) or v1alpha",
            json_schema_extra={"enum": sorted(API_VERSIONS)},
        ),
    ],
) -> str:
    """The ``{version}`` path segment: v1, v1beta or v1alpha."""
    if version not in API_VERSIONS:
        raise NotFound(f"unknown API version {version!r}; use v1 or v1beta")
    return version


def public_base(request: Request) -> str:
    """The base URL clients reach us at (for upload and download URLs), no trailing slash.

    ``server.public_url`` if set, else the request's scheme and Host. Forwarded headers
    are never read here: ``guard.Guard`` has already applied those of a trusted proxy
    and checked the Host against ``server.allowed_hosts``.
    """
    configured = get_services(request).settings.server.public_url
    if configured:
        return str(configured).rstrip("/")
    proto = request.url.scheme
    host = request.headers.get("host")
    if not host:
        address, port = request.scope.get("server") or ("127.0.0.1", None)
        address = f"[{address}]" if ":" in str(address) else str(address)
        host = address if port is None else f"{address}:{port}"
    prefix = request.scope.get("root_path", "")
    return f"{proto}://{host}{prefix}".rstrip("/")


ServicesDep = Annotated[ServiceSet, Depends(get_services)]
TenantDep = Annotated[str, Depends(get_tenant)]
VersionDep = Annotated[str, Depends(check_version)]
BaseDep = Annotated[str, Depends(public_base)]
