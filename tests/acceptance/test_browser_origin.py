"""A real headless Chromium attacks a keyless ``overnight serve`` on loopback.

tests/integration/test_api_guard.py sends the headers a browser would send; this one
lets the browser decide what it sends and what a page may read. An "attacker" page on
another origin (a second HTTP server on loopback, reached as ``attacker.example``)
tries the requests a web page can make without the user's help: simple ``fetch``
POSTs as ``text/plain`` and ``no-cors``, an auto-submitted ``text/plain`` form whose
body is JSON, a preflighted JSON ``fetch``, cancels of a running batch, and reading the
batch list. A DNS-rebinding page (``evil.example`` resolving to 127.0.0.1, on
Overnight's own port) tries to read the list as a same-origin page. Nothing may be
created, cancelled or read; the server's state is checked through the SDK, what the
page saw comes back from ``page.evaluate``, and what went over the wire (each request's
``Origin`` and the status the server gave it) comes from Chromium's DevTools protocol.

The positive control runs the very same script on the server's own origin: there the
JSON create and the cancel work and every answer is readable, so the requests are
well formed and would reach the server, and only the server's checks stop them.

Chromium is Debian's (``apt-get install chromium``), driven by Playwright, which never
downloads a browser of its own here. Without either the tests are skipped, unless
``OVERNIGHT_REQUIRE_BROWSER=1`` (set by .ci/run), which turns the skip into a failure.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from google import genai
from google.genai import types
from tests.helpers import request
from tests.serving import FAKE_MODELS, running_server

ATTACKER = "attacker.example"
REBINDER = "evil.example"
# One request at a time, half a second each: a 200-request batch stays RUNNING for the
# whole module, and a stop (SIGINT) waits for at most one call.
CONFIG = FAKE_MODELS + (
    '[models.held]\nbackend = "fake"\noptions = { latency_s = 0.5, max_batch_size = 1 }\n'
)
LIVE = ("JOB_STATE_PENDING", "JOB_STATE_RUNNING")

# What a page can do to http://TARGET without the user's help. Every attempt reports
# what the page could see: a fetch that threw, or the response's type, status and body.
ATTACK_JS = """
async function attack(target, victim) {
  const body = JSON.stringify({batch: {displayName: "from-a-web-page", inputConfig: {
    requests: {requests: [{request: {contents: [{parts: [{text: "pwned"}]}]}}]}}}});
  const create = target + "/v1beta/models/echo:batchGenerateContent";
  const cancel = target + "/v1beta/" + victim + ":cancel";
  async function tryFetch(name, url, init) {
    try {
      const r = await fetch(url, init);
      let text;
      try { text = await r.text(); } catch (e) { text = "unreadable: " + e; }
      return {name, outcome: "response", type: r.type, status: r.status, body: text};
    } catch (e) {
      return {name, outcome: "error", error: String(e)};
    }
  }
  // An auto-submitted form into a hidden frame; name + "=" + value is the body, so a
  // text/plain form can send JSON: {"batch": {...}, "pad": "="}.
  function tryForm(name, url, fields) {
    return new Promise((resolve) => {
      const frame = document.createElement("iframe");
      frame.name = name;
      frame.style.display = "none";
      document.body.appendChild(frame);
      const form = document.createElement("form");
      form.method = "POST";
      form.enctype = "text/plain";
      form.action = url;
      form.target = name;
      for (const [key, value] of fields) {
        const input = document.createElement("input");
        input.type = "hidden";
        input.name = key;
        input.value = value;
        form.appendChild(input);
      }
      document.body.appendChild(form);
      const timer = setTimeout(() => resolve({name, outcome: "timeout"}), 10000);
      frame.addEventListener("load", () => {
        clearTimeout(timer);
        let text;
        try { text = frame.contentDocument.body.innerText; }
        catch (e) { text = "unreadable: " + e; }
        resolve({name, outcome: "frame", body: text});
      });
      form.submit();
    });
  }
  const formBody = [[body.slice(0, -1) + ', "pad": "', '"}']];
  return [
    await tryFetch("create text/plain", create, {method: "POST", body,
      headers: {"Content-Type": "text/plain"}}),
    await tryFetch("create no-cors", create, {method: "POST", mode: "no-cors", body}),
    await tryForm("create form", create, formBody),
    await tryFetch("create json", create, {method: "POST", body,
      headers: {"Content-Type": "application/json"}}),
    await tryFetch("cancel", cancel, {method: "POST"}),
    await tryFetch("cancel no-cors", cancel, {method: "POST", mode: "no-cors"}),
    await tryForm("cancel form", cancel, []),
    await tryFetch("list", target + "/v1beta/batches"),
    await tryFetch("list no-cors", target + "/v1beta/batches", {mode: "no-cors"}),
  ];
}
"""


def _browser_reason() -> str | None:
    if shutil.which("chromium") is None:
        return "no chromium on PATH: apt-get install chromium (Debian's package)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the browser tests need playwright: pip install -e '.[dev]'"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = _browser_reason()
    if reason:
        if os.environ.get("OVERNIGHT_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    rules = f"MAP {ATTACKER} 127.0.0.1, MAP {REBINDER} 127.0.0.1"
    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=shutil.which("chromium"),
            args=[f"--host-resolver-rules={rules}"],
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(tmp_path_factory.mktemp("browser"), config=CONFIG) as base:
        yield base


@pytest.fixture(scope="module")
def client(server: str) -> genai.Client:
    return genai.Client(api_key="any-key", http_options=types.HttpOptions(base_url=server))


@contextlib.contextmanager
def attacker_site(html: str) -> Iterator[int]:
    """A second server on loopback that serves ``html`` at every path; yields its port."""
    page = html.encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    try:
        yield site.server_address[1]
    finally:
        site.shutdown()
        site.server_close()


def live_batch(server: str) -> str:
    """A batch on the slow model that stays RUNNING while the page attacks it."""
    items = [{"request": request(f"victim {i}")} for i in range(200)]
    body = {"batch": {"displayName": "victim", "inputConfig": {"requests": {"requests": items}}}}
    response = httpx.post(f"{server}/v1beta/models/held:batchGenerateContent", json=body)
    assert response.status_code == 200, response.text
    name: str = response.json()["name"]
    return name


def batch_names(client: genai.Client) -> set[str]:
    return {b.name for b in client.batches.list(config={"page_size": 100}) if b.name}


def state(client: genai.Client, name: str) -> str:
    return str(client.batches.get(name=name).state.name)  # type: ignore[union-attr]


class Wire:
    """What the browser really sent to ``target`` and what came back, from DevTools.

    ``fetch`` hides a refused answer from the page; the network stack still sees it.
    """

    def __init__(self, context: Any, page: Any, target: str) -> None:
        self.target = target
        self.urls: dict[str, tuple[str, str]] = {}
        self.sent: dict[str, dict[str, str]] = {}
        self.status: dict[str, int] = {}
        cdp = context.new_cdp_session(page)
        cdp.on("Network.requestWillBeSent", self._request)
        cdp.on("Network.requestWillBeSentExtraInfo", self._sent)
        cdp.on("Network.responseReceivedExtraInfo", self._response)
        cdp.send("Network.enable")

    def _request(self, event: dict[str, Any]) -> None:
        req = event["request"]
        self.urls[event["requestId"]] = (req["method"], req["url"])

    def _sent(self, event: dict[str, Any]) -> None:
        self.sent[event["requestId"]] = {k.lower(): v for k, v in event["headers"].items()}

    def _response(self, event: dict[str, Any]) -> None:
        self.status[event["requestId"]] = event["statusCode"]

    def entries(self) -> list[dict[str, Any]]:
        """Each request to ``target``: method, path, whether it went out, the ``Origin``,
        ``Sec-Fetch-Mode`` and ``Content-Type`` it carried, and the status it got (None
        for one the browser never sent, such as a POST whose preflight failed)."""
        out = []
        for rid, (method, url) in self.urls.items():
            if url.startswith(self.target + "/"):
                headers = self.sent.get(rid)
                out.append(
                    {
                        "method": method,
                        "path": url.removeprefix(self.target),
                        "sent": headers is not None,
                        "origin": (headers or {}).get("origin"),
                        "mode": (headers or {}).get("sec-fetch-mode"),
                        "content-type": (headers or {}).get("content-type"),
                        "status": self.status.get(rid),
                    }
                )
        return out


def run_attack(
    browser: Any, url: str, target: str, victim: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Open ``url`` and run the attack on ``target`` from it: what the page saw, and
    what went over the wire (``Wire.entries``)."""
    context = browser.new_context()
    try:
        page = context.new_page()
        wire = Wire(context, page, target)
        page.goto(url)
        page.add_script_tag(content=ATTACK_JS)
        results: list[dict[str, Any]] = page.evaluate("([t, v]) => attack(t, v)", [target, victim])
        page.wait_for_timeout(200)  # the last DevTools events
        return results, wire.entries()
    finally:
        context.close()


def test_a_foreign_page_can_neither_write_nor_read(
    browser: Any, server: str, client: genai.Client
) -> None:
    victim = live_batch(server)
    before = batch_names(client)
    html = "<!doctype html><title>cute cats</title><body><p>nothing to see here</p></body>"
    with attacker_site(html) as port:
        results, wire = run_attack(browser, f"http://{ATTACKER}:{port}/", server, victim)
    report = json.dumps(results, indent=1)
    assert len(results) == 9, report
    for result in results:
        # a fetch that threw (CORS), an opaque no-cors answer, or a frame it cannot read
        if result["outcome"] == "error":
            assert "TypeError" in result["error"], report
        elif result["outcome"] == "response":
            assert (result["type"], result["status"], result["body"]) == ("opaque", 0, ""), report
        else:
            assert result["outcome"] == "frame", report
            assert result["body"].startswith("unreadable"), report
        assert victim.split("/")[-1] not in json.dumps(result), report
    # the server state, through the SDK: nothing created, the victim still running
    assert batch_names(client) == before
    assert state(client, victim) in LIVE
    # every request reached the server, and each that said where it came from got 403
    wire_report = json.dumps(wire, indent=1)
    posts = {(e["path"], e["mode"]) for e in wire if e["method"] == "POST" and e["sent"]}
    for path in ("/v1beta/models/echo:batchGenerateContent", f"/v1beta/{victim}:cancel"):
        for mode in ("cors", "no-cors", "navigate"):  # fetch, no-cors fetch, the form
            assert (path, mode) in posts, wire_report
    for entry in wire:
        if entry["origin"] is not None:
            assert entry["origin"] == f"http://{ATTACKER}:{port}", wire_report
            assert entry["status"] == 403, wire_report
        elif entry["sent"]:
            # Chromium sends no Origin on a no-cors GET, but says Sec-Fetch-Site: cross-site
            assert (entry["method"], entry["mode"]) == ("GET", "no-cors"), wire_report
            assert entry["status"] == 403, wire_report
        # the preflighted JSON POST never left the browser: its OPTIONS got 403
        assert not (entry["sent"] and entry["content-type"] == "application/json"), wire_report
    # the victim's name was right: a proper client can cancel it
    client.batches.cancel(name=victim)
    assert state(client, victim) == "JOB_STATE_CANCELLED"


def read_batches_as(browser: Any, host: str) -> tuple[int, dict[str, Any]]:
    """A page at http://HOST/ reads /v1beta/batches with a same-origin fetch."""
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"http://{host}/healthz")
        got: dict[str, Any] = page.evaluate(
            """async () => {
              const r = await fetch("/v1beta/batches");
              return {status: r.status, body: await r.text()};
            }"""
        )
    finally:
        context.close()
    return got["status"], json.loads(got["body"])


def test_a_dns_rebinding_page_cannot_read(browser: Any, server: str, client: genai.Client) -> None:
    victim = live_batch(server)
    port = server.rsplit(":", 1)[1]
    # evil.example now resolves to 127.0.0.1: its page is on Overnight's own port, so to
    # the browser its requests are same-origin; only the Host header says they are foreign
    status, body = read_batches_as(browser, f"{REBINDER}:{port}")
    assert status == 403, body
    assert body["error"]["status"] == "PERMISSION_DENIED", body
    assert "server.allowed_hosts" in body["error"]["message"], body
    assert "operations" not in body and victim.split("/")[-1] not in json.dumps(body)
    # the very same page under a name the server answers to reads the list
    status, body = read_batches_as(browser, f"localhost:{port}")
    assert status == 200, body
    assert victim in {op["name"] for op in body["operations"]}
    client.batches.cancel(name=victim)


def test_control_the_same_script_on_the_servers_own_origin_works(
    browser: Any, server: str, client: genai.Client
) -> None:
    decoy = live_batch(server)
    before = batch_names(client)
    results, _ = run_attack(browser, f"{server}/healthz", server, decoy)
    by_name = {r["name"]: r for r in results}
    report = json.dumps(results, indent=1)
    # readable answers, and the server's JSON-only rule still refuses the text/plain ones
    for name in ("create text/plain", "create no-cors"):
        assert (by_name[name]["status"], by_name[name]["type"]) == (415, "basic"), report
    for name in ("create form", "cancel form"):
        assert "application/json" in by_name[name]["body"], report
    # the JSON create and the body-less cancel work: the requests were well formed
    created = json.loads(by_name["create json"]["body"])
    assert by_name["create json"]["status"] == 200, report
    assert by_name["cancel"]["status"] == 200, report
    listed = json.loads(by_name["list"]["body"])
    assert decoy in {op["name"] for op in listed["operations"]}, report
    assert batch_names(client) == before | {created["name"]}
    assert state(client, decoy) == "JOB_STATE_CANCELLED"
