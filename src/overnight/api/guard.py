"""What a web page, a DNS-rebinding domain or a spoofed proxy header cannot do.

A keyless server on loopback trusts whoever reaches it, and a browser on the same
machine reaches it on behalf of any page it visits. This pure ASGI middleware runs
before routing and refuses, Google-style:

- a ``Host`` that is not this server's (403): a DNS-rebinding page's requests name
  its own domain. Loopback names, the bind address, the address the connection came
  in on, ``server.public_url``'s host and ``server.allowed_hosts`` are this server's;
- an ``Origin`` other than the server's own (403): browsers send it on every
  cross-origin request and pages cannot forge it. No CORS headers are ever sent, so
  a foreign page can neither read an answer nor pass a preflight;
- a request whose ``Sec-Fetch-Site`` says another site sent it (403): browsers add it
  even where they leave ``Origin`` out (a ``no-cors`` GET), and programs never send it;
- a write whose body is not declared ``application/json`` (415), because a simple
  cross-origin request (no preflight) can only send ``text/plain``, a form or a blob.
  The resumable upload protocol's chunk requests carry raw bytes and are exempt.

Every answer carries ``Cross-Origin-Resource-Policy: same-origin`` and
``X-Content-Type-Options: nosniff``, so even an opaque cross-site load of a response
never lands in another site's renderer.

``X-Forwarded-Proto``, ``-Host`` and ``-For`` are believed only from a peer in
``server.trusted_proxies``; then they replace the scheme, the Host header and the
client address in the scope, so nothing downstream (upload and download URLs) ever
reads a forwarded header itself.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import parse_qs, urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from overnight.api.errors import error_response
from overnight.config import ServerSettings

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH"})
DEFAULT_PORTS = {"http": 80, "https": 443}
# Sec-Fetch-Site values of requests a page on another site cannot have made
OWN_SITE = frozenset({"same-origin", "none"})
SAFE_HEADERS = [
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"x-content-type-options", b"nosniff"),
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


_HOST = re.compile(r"(?:[a-z0-9_.-]+|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?")


def split_host(host: str) -> tuple[str, int | None]:
    """``Example.com:8080`` → (``example.com``, 8080); IPv6 stays bracketed: ``[::1]``."""
    host = host.strip().lower()
    if host.startswith("["):
        name, _, rest = host.partition("]")
        port = rest.removeprefix(":")
        return name + "]", int(port) if port.isdigit() else None
    name, sep, port = host.rpartition(":")
    if not sep or ":" in name:  # no port, or an unbracketed IPv6 address
        return host, None
    return name, int(port) if port.isdigit() else None


def _bracketed(address: str) -> str:
    """An address as it appears in a Host header (IPv6 in brackets)."""
    address = address.lower()
    return f"[{address}]" if ":" in address and not address.startswith("[") else address


def _is_loopback_ip(name: str) -> bool:
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


class Guard:
    """The middleware; ``bind_host`` is the address ``overnight serve`` listens on."""

    def __init__(self, app: ASGIApp, settings: ServerSettings, bind_host: str | None) -> None:
        self.app = app
        self.any_host = "*" in settings.allowed_hosts
        names = {_bracketed(bind_host or settings.host)}
        if settings.public_url:
            public = urlsplit(str(settings.public_url)).hostname
            if public:
                names.add(_bracketed(public))
        for entry in settings.allowed_hosts:
            entry = entry.strip().lower()
            entry = "." + entry[2:] if entry.startswith("*.") else entry
            names.add(_bracketed(split_host(entry)[0]))
        self.hosts = frozenset(n for n in names if not n.startswith("."))
        self.suffixes = tuple(n for n in names if n.startswith("."))
        self.proxies: list[Network] = [
            ipaddress.ip_network(p, strict=False) for p in settings.trusted_proxies
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        if self.proxies and client and self._trusted(client[0]):
            scope = self._forwarded(scope)

        async def send_safe(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *SAFE_HEADERS]}
            await send(message)

        refusal = self._refusal(scope)
        if refusal is not None:
            code, message = refusal
            await error_response(code, message)(scope, receive, send_safe)
            return
        await self.app(scope, receive, send_safe)

    # ---- forwarded headers

    def _trusted(self, address: object) -> bool:
        try:
            ip = ipaddress.ip_address(str(address))
        except ValueError:
            return False
        return any(ip in network for network in self.proxies)

    def _forwarded(self, scope: Scope) -> Scope:
        """The scope as the client saw it, from the trusted proxy's X-Forwarded-* headers.

        Each proxy appends to the lists, so the last value is the one our trusted peer
        wrote; for the client address, the last one that is not itself a trusted proxy.
        """
        headers = _headers(scope)
        scope = dict(scope)
        proto = _last(headers.get(b"x-forwarded-proto"))
        if proto in ("http", "https"):
            scope["scheme"] = proto
        host = _last(headers.get(b"x-forwarded-host"))
        if host:
            scope["headers"] = [(k, v) for k, v in scope["headers"] if k.lower() != b"host"]
            scope["headers"].append((b"host", host.encode("latin-1")))
        chain = [a.strip() for a in headers.get(b"x-forwarded-for", "").split(",") if a.strip()]
        for address in reversed(chain):
            if not self._trusted(address):
                scope["client"] = (address, 0)
                break
        return scope

    # ---- the checks

    def _refusal(self, scope: Scope) -> tuple[int, str] | None:
        headers = _headers(scope)
        host = headers.get(b"host") or ""
        if not self._host_allowed(host, scope):
            return (
                403,
                f"the Host {host!r} is not one this server answers to; add it to "
                "server.allowed_hosts (OVERNIGHT_SERVER__ALLOWED_HOSTS) if clients really "
                "reach the server by that name",
            )
        origin = headers.get(b"origin")
        if origin is not None and not self._same_origin(origin, scope, host):
            return (
                403,
                f"cross-origin requests are refused (Origin {origin!r}): this API is not "
                "for web pages on other sites; call it from a program or the command line",
            )
        site = headers.get(b"sec-fetch-site")
        if site is not None and site.strip().lower() not in OWN_SITE:
            return (
                403,
                f"requests sent by a web page on another site are refused (Sec-Fetch-Site "
                f"{site!r}): this API is not for web pages on other sites; call it from a "
                "program or the command line",
            )
        if scope["method"] in WRITE_METHODS and not _raw_upload(scope, headers):
            content_type = headers.get(b"content-type")
            has_body = headers.get(b"content-length", "0") != "0" or b"transfer-encoding" in headers
            if (content_type is not None or has_body) and not _is_json(content_type):
                return (
                    415,
                    f"the body must be JSON, sent with Content-Type: application/json (got "
                    f"{content_type or 'no Content-Type'})",
                )
        return None

    def _host_allowed(self, host: str, scope: Scope) -> bool:
        if not host:  # HTTP/1.0 without a Host: nothing a browser sends
            return True
        if not _HOST.fullmatch(host.strip().lower()):
            return False
        if self.any_host:
            return True
        name, _ = split_host(host)
        if name in LOOPBACK_NAMES or name in self.hosts or _is_loopback_ip(name):
            return True
        server = scope.get("server")
        if server and name == _bracketed(str(server[0])):  # the address dialled
            return True
        return any(name.endswith(suffix) or name == suffix[1:] for suffix in self.suffixes)

    def _same_origin(self, origin: str, scope: Scope, host: str) -> bool:
        parts = urlsplit(origin.strip())
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            return False  # "null" (sandboxed frames, file://) and anything odd
        try:
            origin_port = parts.port or DEFAULT_PORTS[parts.scheme]
        except ValueError:
            return False
        name, port = split_host(host)
        scheme = scope.get("scheme", "http")
        return (
            parts.scheme == scheme
            and _bracketed(parts.hostname) == name
            and origin_port == (port or DEFAULT_PORTS.get(scheme))
        )


def _headers(scope: Scope) -> dict[bytes, str]:
    """The first value of each header, lower-cased names (one pass over the list)."""
    out: dict[bytes, str] = {}
    for key, value in scope["headers"]:
        out.setdefault(key.lower(), value.decode("latin-1"))
    return out


def _last(value: str | None) -> str:
    return value.rsplit(",", 1)[-1].strip().lower() if value else ""


def _is_json(content_type: str | None) -> bool:
    if content_type is None:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def _raw_upload(scope: Scope, headers: dict[bytes, str]) -> bool:
    """An upload-protocol request that carries file bytes (a chunk, query, cancel)."""
    path: str = scope["path"]
    parts = path.removeprefix(scope.get("root_path", "")).strip("/").split("/")
    if len(parts) != 3 or parts[0] != "upload" or parts[2] != "files":
        return False
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    command = headers.get(b"x-goog-upload-command", "").strip().lower()
    return "upload_id" in query or command not in ("", "start")
