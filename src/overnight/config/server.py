"""``[server]``: the HTTP API."""

from __future__ import annotations

import ipaddress
from typing import Any

from pydantic import Field, field_validator

from overnight.config.base import Section


class ServerSettings(Section):
    """The HTTP API (`overnight serve`)."""

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8080, ge=0, le=65535, description="Port to listen on (0: any free port).")
    public_url: str | None = Field(
        None,
        description="Base URL clients reach this server at, for upload and download URLs; "
        "default: derived from each request's Host header.",
    )
    allow_unauthenticated: bool = Field(
        False,
        description="Serve on a non-loopback address without API keys. Off by default: "
        "anyone who can reach the port could read and run your batches.",
    )
    max_upload_bytes: int = Field(
        2 * 1024**3, ge=1, description="Largest file accepted by the upload API (Gemini: 2 GB)."
    )
    max_inline_bytes: int = Field(
        20 * 1024**2,
        ge=1,
        description="Largest batch-create request body with inline requests (Gemini: 20 MB).",
    )
    max_request_bytes: int = Field(
        32 * 1024**2,
        ge=1024,
        description="Largest body of any request but an upload chunk (those are bounded by "
        "server.max_upload_bytes); larger ones get 413. Room for a 20 MB inline batch plus "
        "JSON overhead.",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names clients may send in the Host header, besides localhost, "
        "127.0.0.1, [::1], the bind address and server.public_url's host; `.example.com` also "
        "allows its subdomains, `*` allows any. Others get 403: this stops DNS rebinding.",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses or CIDRs of reverse proxies whose X-Forwarded-Proto, "
        "X-Forwarded-Host and X-Forwarded-For are believed; from anyone else those headers "
        'are ignored. Example: ["127.0.0.1", "10.0.0.0/8"].',
    )
    file_retention_hours: float = Field(
        48.0, gt=0, description="Uploaded files are deleted this long after upload (Gemini: 48 h)."
    )
    upload_session_minutes: float = Field(
        60.0, gt=0, description="How long a resumable upload URL stays valid."
    )
    embedded_workers: bool = Field(
        True,
        description="`overnight serve` also runs workers; turn off to run `overnight worker` apart.",
    )

    @field_validator("allowed_hosts", "trusted_proxies", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        """An environment variable gives one string: split it at commas."""
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(
                    f"server.trusted_proxies: {entry!r} is not an IP address or CIDR"
                ) from None
        return value
