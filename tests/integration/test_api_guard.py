"""The HTTP layer's safety, against a real ``overnight serve`` on loopback.

What a web page in the user's browser can do to a keyless local server (nothing),
what a request naming a foreign ``Host`` gets (refused), whose forwarded headers are
believed (trusted proxies only), and the bounds on bodies and list responses.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from google import genai
from google.genai import types
from tests.conftest import fake_settings, run
from tests.helpers import request
from tests.serving import FAKE_MODELS, running_server

from overnight.api.server import create_app
from overnight.app import build_runtime
from overnight.cli.serve import check_bind
from overnight.config import load_settings
from overnight.errors import ConfigError

EVIL = "http://evil.example"
SMALL_LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The default keyless loopback server: what `overnight serve` gives a new user."""
    with running_server(tmp_path_factory.mktemp("serve")) as base:
        yield base


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Behind a trusted reverse proxy on loopback, with a small request limit."""
    config = FAKE_MODELS + (
        "[server]\n"
        'trusted_proxies = ["127.0.0.0/8"]\n'
        'allowed_hosts = ["batch.example.com"]\n'
        f"max_request_bytes = {SMALL_LIMIT}\n"
    )
    with running_server(tmp_path_factory.mktemp("proxied"), config=config) as base:
        yield base


def inline(texts: list[str], model: str = "echo") -> tuple[str, bytes]:
    items = [{"request": request(t), "metadata": {"key": f"k{i}"}} for i, t in enumerate(texts)]
    body = {"batch": {"displayName": "d", "inputConfig": {"requests": {"requests": items}}}}
    return f"/v1/models/{model}:batchGenerateContent", json.dumps(body).encode()


def create(base: str, texts: list[str], model: str = "echo", **headers: str) -> dict[str, Any]:
    path, body = inline(texts, model)
    response = httpx.post(
        base + path, content=body, headers={"content-type": "application/json", **headers}
    )
    assert response.status_code == 200, response.text
    created: dict[str, Any] = response.json()
    return created


def names(base: str) -> set[str]:
    page = httpx.get(f"{base}/v1/batches", params={"pageSize": 100}).json()
    return {op["name"] for op in page.get("operations", [])}


def wait_done(base: str, name: str, **headers: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        op: dict[str, Any] = httpx.get(f"{base}/v1/{name}", headers=headers).json()
        if op.get("done"):
            return op
        assert time.monotonic() < deadline, op
        time.sleep(0.05)


def refused(response: httpx.Response, *codes: int) -> dict[str, Any]:
    assert response.status_code in codes, (response.status_code, response.text)
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == response.status_code
    assert "access-control-allow-origin" not in response.headers
    return error


# ---- a page on another origin, as a browser sends it (no preflight) --------------------


def test_cross_origin_page_cannot_create_batches(server: str) -> None:
    before = names(server)
    path, body = inline(["from a web page"])
    # fetch(url, {method: "POST", mode: "no-cors", body: JSON.stringify(...)})
    simple = {"Origin": EVIL, "Content-Type": "text/plain;charset=UTF-8"}
    refused(httpx.post(server + path, content=body, headers=simple), 403, 415)
    # a form post, and a Blob body (no Content-Type at all)
    form = {"Origin": EVIL, "Content-Type": "application/x-www-form-urlencoded"}
    refused(httpx.post(server + path, content=body, headers=form), 403, 415)
    refused(httpx.post(server + path, content=body, headers={"Origin": EVIL}), 403, 415)
    # even a JSON content type does not help a foreign origin (it needs a preflight anyway)
    as_json = {"Origin": EVIL, "Content-Type": "application/json"}
    refused(httpx.post(server + path, content=body, headers=as_json), 403)
    # and without an Origin (an old browser's form post) the content type still refuses it
    error = refused(
        httpx.post(server + path, content=body, headers={"Content-Type": "text/plain"}), 415
    )
    assert "application/json" in error["message"]
    assert names(server) == before


def test_cross_origin_page_cannot_cancel_or_delete(server: str) -> None:
    op = create(server, ["slow"] * 40, model="slow-echo")
    url = f"{server}/v1/{op['name']}"
    refused(httpx.post(f"{url}:cancel", headers={"Origin": EVIL}), 403)
    refused(
        httpx.post(f"{url}:cancel", headers={"Origin": EVIL, "Content-Type": "text/plain"}), 403
    )
    refused(httpx.post(f"{url}:cancel", headers={"Content-Type": "text/plain"}), 415)
    refused(httpx.delete(url, headers={"Origin": EVIL}), 403)
    state = httpx.get(url).json()["metadata"]["state"]
    assert state in ("BATCH_STATE_PENDING", "BATCH_STATE_RUNNING", "BATCH_STATE_SUCCEEDED")
    # the SDK's own cancel (empty body, JSON content type) still works
    assert httpx.post(f"{url}:cancel", headers={"Content-Type": "application/json"}).json() == {}


def test_cross_origin_page_cannot_read(server: str) -> None:
    create(server, ["secret"])
    for path in ("/v1/batches", "/v1/files", "/v1/models"):
        refused(httpx.get(server + path, headers={"Origin": EVIL}), 403)
        refused(httpx.get(server + path, headers={"Origin": "null"}), 403)
    # a CORS preflight gets no CORS headers, so the browser never sends the real request
    preflight = httpx.options(
        f"{server}/v1/batches",
        headers={"Origin": EVIL, "Access-Control-Request-Method": "GET"},
    )
    assert "access-control-allow-origin" not in preflight.headers
    assert preflight.status_code >= 400
    # the same origin is not foreign: a page the server itself served may call it
    same = httpx.get(f"{server}/v1/batches", headers={"Origin": server})
    assert same.status_code == 200, same.text
    assert "access-control-allow-origin" not in same.headers
    # every answer, refused or not, forbids cross-site loads and MIME sniffing
    for answer in (same, preflight):
        assert answer.headers["cross-origin-resource-policy"] == "same-origin"
        assert answer.headers["x-content-type-options"] == "nosniff"


def test_cross_site_fetch_without_origin_is_refused(server: str) -> None:
    # Chromium leaves Origin out of a no-cors GET but marks it Sec-Fetch-Site: cross-site
    for site in ("cross-site", "same-site"):
        answer = httpx.get(f"{server}/v1/batches", headers={"Sec-Fetch-Site": site})
        refused(answer, 403)
        assert "another site" in answer.json()["error"]["message"]
    # the user typing the URL (none) and the server's own pages (same-origin) still read
    for site in ("none", "same-origin"):
        answer = httpx.get(f"{server}/v1/batches", headers={"Sec-Fetch-Site": site})
        assert answer.status_code == 200, answer.text


def test_dns_rebinding_foreign_host_is_refused(server: str) -> None:
    port = server.rsplit(":", 1)[1]
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}"):
        error = refused(httpx.get(f"{server}/v1/batches", headers={"Host": host}), 403, 421)
        assert "server.allowed_hosts" in error["message"]
        assert "evil.example" in error["message"]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"LOCALHOST:{port}", "[::1]"):
        ok = httpx.get(f"{server}/v1/batches", headers={"Host": host})
        assert ok.status_code == 200, (host, ok.text)


# ---- forwarded headers -----------------------------------------------------------------


def upload_url(base: str, **headers: str) -> str:
    response = httpx.post(
        f"{base}/upload/v1/files",
        content=b'{"file": {"display_name": "x"}}',
        headers={
            "Content-Type": "application/json",
            "X-Goog-Upload-Protocol": "resumable",
            "X-Goog-Upload-Command": "start",
            "X-Goog-Upload-Header-Content-Length": "3",
            **headers,
        },
    )
    assert response.status_code == 200, response.text
    return response.headers["x-goog-upload-url"]


FORWARDED = {
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "batch.example.com",
    "X-Forwarded-For": "203.0.113.7",
}


def test_forwarded_headers_from_an_untrusted_peer_are_ignored(server: str) -> None:
    url = upload_url(server, **FORWARDED)
    assert url.startswith(f"{server}/upload/v1/files?upload_id="), url
    # the upload URL comes from the (allowed) Host, never from a header anyone can send
    chunk = httpx.post(
        url,
        content=b"abc",
        headers={"X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "0"},
    )
    assert chunk.status_code == 200, chunk.text
    assert chunk.json()["file"]["uri"].startswith(f"{server}/v1/files/")


def test_forwarded_headers_from_a_trusted_proxy_are_honoured(proxied: str) -> None:
    url = upload_url(proxied, **FORWARDED)
    assert url.startswith("https://batch.example.com/upload/v1/files?upload_id="), url
    # a forwarded host that is not allowed is refused like a foreign Host
    error = refused(
        httpx.get(f"{proxied}/v1/batches", headers={**FORWARDED, "X-Forwarded-Host": "evil.ex"}),
        403,
        421,
    )
    assert "server.allowed_hosts" in error["message"]
    # the page at https://batch.example.com is the server's own origin
    same = httpx.get(
        f"{proxied}/v1/batches", headers={**FORWARDED, "Origin": "https://batch.example.com"}
    )
    assert same.status_code == 200, same.text


# ---- body limits -----------------------------------------------------------------------


def test_oversize_sync_body_is_413(proxied: str) -> None:
    body = json.dumps(request("x" * (SMALL_LIMIT + 10))).encode()
    url = f"{proxied}/v1/models/echo:generateContent"
    headers = {"Content-Type": "application/json"}
    error = refused(httpx.post(url, content=body, headers=headers), 413)
    assert str(SMALL_LIMIT) in error["message"]
    assert "server.max_request_bytes" in error["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the bytes are counted
        for i in range(0, len(body), 4096):
            yield body[i : i + 4096]

    streamed = httpx.post(url, content=chunks(), headers=headers)
    assert "content-length" not in streamed.request.headers
    assert "server.max_request_bytes" in refused(streamed, 413)["message"]
    small = httpx.post(url, content=json.dumps(request("hi")).encode(), headers=headers)
    assert small.status_code == 200, small.text


def test_oversize_batch_create_is_413(proxied: str) -> None:
    before = names(proxied)
    path, body = inline(["y" * 1000] * (SMALL_LIMIT // 1000 + 5))
    error = refused(
        httpx.post(proxied + path, content=body, headers={"Content-Type": "application/json"}),
        413,
    )
    assert "server.max_request_bytes" in error["message"]
    assert names(proxied) == before


# ---- list responses --------------------------------------------------------------------


def test_list_carries_no_inline_results(server: str) -> None:
    op = create(server, ["one", "two"])
    done = wait_done(server, op["name"])
    inlined = done["metadata"]["output"]["inlinedResponses"]["inlinedResponses"]
    assert len(inlined) == 2
    listed = httpx.get(f"{server}/v1/batches", params={"pageSize": 100_000}).json()
    assert len(listed["operations"]) <= 100
    mine = next(o for o in listed["operations"] if o["name"] == op["name"])
    assert "inlinedResponses" not in json.dumps(mine)
    assert mine["metadata"]["state"] == "BATCH_STATE_SUCCEEDED"
    assert mine["done"] is True
    assert mine["metadata"]["batchStats"]["successfulRequestCount"] == "2"
    # the SDK's pager still reads the list, and a get still carries the results
    client = genai.Client(api_key="k", http_options=types.HttpOptions(base_url=server))
    jobs = {job.name: job for job in client.batches.list(config={"page_size": 5})}
    state = jobs[op["name"]].state
    assert state is not None and state.name == "JOB_STATE_SUCCEEDED"
    got = client.batches.get(name=op["name"])
    assert got.dest is not None and got.dest.inlined_responses is not None
    assert len(got.dest.inlined_responses) == 2


# ---- 405 -------------------------------------------------------------------------------


def test_405_lists_the_allowed_methods(server: str) -> None:
    response = httpx.put(f"{server}/v1/batches/abc", json={})
    refused(response, 405)
    assert set(response.headers["allow"].replace(" ", "").split(",")) >= {"GET", "DELETE"}
    response = httpx.delete(f"{server}/v1/models/echo:generateContent")
    refused(response, 405)
    assert "POST" in response.headers["allow"]
    assert "DELETE" not in response.headers["allow"]


# ---- tenants: no existence oracle ------------------------------------------------------


def keys_create(workdir: Path, tenant: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "overnight.cli.main", "keys", "create", tenant, "-d", "data"],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=True,
    )
    return next(w for w in done.stdout.split() if w.startswith("ovn_"))


def start_upload(base: str, key: str, name: str) -> httpx.Response:
    return httpx.post(
        f"{base}/upload/v1/files",
        content=json.dumps({"file": {"name": name}}).encode(),
        headers={
            "Content-Type": "application/json",
            "x-goog-api-key": key,
            "X-Goog-Upload-Protocol": "resumable",
            "X-Goog-Upload-Command": "start",
            "X-Goog-Upload-Header-Content-Length": "3",
        },
    )


def test_another_tenants_resources_are_404_and_never_named(tmp_path: Path) -> None:
    workdir = tmp_path / "keyed"
    with running_server(workdir) as base:
        alice, bob = keys_create(workdir, "alice"), keys_create(workdir, "bob")
        time.sleep(2.1)  # the authenticator's 2 s cache of "are there keys"
        url = start_upload(base, alice, "files/privatedata").headers["x-goog-upload-url"]
        httpx.post(
            url,
            content=b"abc",
            headers={"X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "0"},
        ).raise_for_status()
        op = create(base, ["mine"], **{"x-goog-api-key": alice})
        as_bob = {"x-goog-api-key": bob, "Content-Type": "application/json"}
        answers = [
            httpx.get(f"{base}/v1/{op['name']}", headers=as_bob),
            httpx.post(f"{base}/v1/{op['name']}:cancel", headers=as_bob),
            httpx.delete(f"{base}/v1/{op['name']}", headers=as_bob),
            httpx.get(f"{base}/v1/files/privatedata", headers=as_bob),
            httpx.get(f"{base}/v1/files/privatedata:download", headers=as_bob),
            httpx.delete(f"{base}/v1/files/privatedata", headers=as_bob),
            httpx.post(
                f"{base}/v1/models/echo:batchGenerateContent",
                json={"batch": {"inputConfig": {"fileName": "files/privatedata"}}},
                headers=as_bob,
            ),
        ]
        for answer in answers:
            error = refused(answer, 404)
            assert "alice" not in error["message"], error
        # bob's names are his own: alice's file does not make his start answer "taken"
        taken = start_upload(base, bob, "files/privatedata")
        assert taken.status_code == 200, taken.text
        assert httpx.get(f"{base}/v1/files/privatedata", headers=as_bob).status_code == 404


# ---- an unauthenticated non-loopback server is loud -------------------------------------


def test_allow_unauthenticated_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    async def go() -> None:
        runtime = await build_runtime(fake_settings(tmp_path))
        try:
            runtime.settings.server.allow_unauthenticated = True
            with caplog.at_level(logging.WARNING):
                check_bind(runtime.services, "0.0.0.0")
        finally:
            await runtime.close()

    run(go())
    assert "without API keys" in caplog.text
    assert "without API keys" in capsys.readouterr().err


def test_serve_warns_when_unauthenticated_on_all_interfaces(tmp_path: Path) -> None:
    env = {"OVERNIGHT_SERVER__HOST": "0.0.0.0", "OVERNIGHT_SERVER__ALLOW_UNAUTHENTICATED": "1"}
    with running_server(tmp_path, env={**os.environ, **env}) as base:
        assert httpx.get(f"{base}/v1/models").status_code == 200
    log = (tmp_path / "serve.log").read_text()
    assert "WARNING" in log.upper() and "without API keys" in log


# ---- the settings ----------------------------------------------------------------------


def test_allowed_hosts_and_trusted_proxies_settings(tmp_path: Path) -> None:
    environ = {
        "OVERNIGHT_SERVER__ALLOWED_HOSTS": "*.example.com, api.test:8443",
        "OVERNIGHT_SERVER__TRUSTED_PROXIES": "10.0.0.0/8,::1",
    }
    settings = load_settings(environ=environ, overrides={"data_dir": str(tmp_path / "d")})
    assert settings.server.allowed_hosts == ["*.example.com", "api.test:8443"]
    assert settings.server.trusted_proxies == ["10.0.0.0/8", "::1"]
    with pytest.raises(ConfigError, match="trusted_proxies"):
        load_settings(environ={"OVERNIGHT_SERVER__TRUSTED_PROXIES": "a-proxy"})

    async def go() -> None:
        runtime = await build_runtime(settings)
        transport = httpx.ASGITransport(app=create_app(runtime.services))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
                for host in ("a.example.com", "b.a.example.com:80", "example.com", "api.test"):
                    answer = await client.get("/v1/models", headers={"Host": host})
                    assert answer.status_code == 200, (host, answer.text)
                for host in ("evil.com", "example.com.evil.com", "127.0.0.1/x", "a b"):
                    answer = await client.get("/v1/models", headers={"Host": host})
                    assert answer.status_code == 403, (host, answer.text)
        finally:
            await runtime.close()

    run(go())
