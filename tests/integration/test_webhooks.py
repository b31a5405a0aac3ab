"""Webhooks end to end in one process: the API over ASGI, a real worker on the fake
``echo`` model, the real dispatcher, and a real HTTP receiver on loopback.

Every delivery the receiver gets is verified with the Standard Webhooks reference
library (``standardwebhooks.Webhook.verify``), with the secret the API handed out.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook as Verifier
from standardwebhooks import WebhookVerificationError
from tests.conftest import fake_settings, run
from tests.helpers import request

from overnight.api.server import create_app
from overnight.app import Runtime, build_runtime
from overnight.config import ModelSettings
from overnight.domain.webhooks import Delivery, DeliveryState

FAST = {
    "allow_private_addresses": True,
    "retry_initial_seconds": 0.05,
    "retry_max_seconds": 0.2,
    "poll_seconds": 0.02,
    "timeout_seconds": 5.0,
}


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    path: str = ""

    def verified(self, secret: str) -> dict[str, Any]:
        payload: dict[str, Any] = Verifier(secret).verify(self.body, self.headers)
        return payload


@dataclass
class Receiver:
    """A webhook receiver on loopback: records every POST, answers with the next status
    of ``statuses`` (200 once they run out)."""

    statuses: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    url: str = ""
    port: int = 0  # 0: any free port

    def serve(self) -> Iterator[Receiver]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                owner.received.append(Received(dict(self.headers.items()), body, self.path))
                status = owner.statuses.pop(0) if owner.statuses else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.url = f"http://127.0.0.1:{server.server_port}/hook"
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()

    async def wait_for(self, count: int, timeout: float = 20) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            assert time.monotonic() < deadline, f"got {len(self.received)} of {count} deliveries"
            await asyncio.sleep(0.02)
        return self.received


@contextlib.contextmanager
def receiver(statuses: list[int] | None = None) -> Iterator[Receiver]:
    yield from Receiver(list(statuses or [])).serve()


@contextlib.asynccontextmanager
async def serving(
    tmp_path: Path, database_url: str | None = None, *, dispatch: bool = True, **webhooks: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    settings = fake_settings(tmp_path, database_url)
    slow = ModelSettings(backend="fake", options={"latency_s": 0.05, "max_batch_size": 2})
    settings = settings.model_copy(
        update={
            "models": {**settings.models, "slow-echo": slow},
            "aliases": {"gemini-*": "echo"},
            "webhooks": settings.webhooks.model_copy(update=webhooks),
        }
    )
    runtime = await build_runtime(settings)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(runtime.worker().run(stop))]
    if dispatch:
        tasks.append(asyncio.create_task(runtime.webhook_dispatcher().run(stop)))
    transport = httpx.ASGITransport(app=create_app(runtime.services))
    try:
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://test",
            headers={"content-type": "application/json"},
        ) as client:
            yield client, runtime
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await runtime.close()


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def refused(response: httpx.Response, code: int = 400) -> str:
    assert response.status_code == code, response.text
    message: str = response.json()["error"]["message"]
    return message


async def create_hook(
    client: httpx.AsyncClient, uri: str, events: list[str], **extra: Any
) -> dict[str, Any]:
    body = {"uri": uri, "subscribed_events": events, **extra}
    hook: dict[str, Any] = ok(await client.post("/v1beta/webhooks", json=body))
    return hook


async def run_batch(
    client: httpx.AsyncClient, texts: list[str], *, webhook_config: Any = None, cancel: bool = False
) -> dict[str, Any]:
    batch: dict[str, Any] = {
        "inputConfig": {"requests": {"requests": [{"request": request(t)} for t in texts]}}
    }
    if webhook_config is not None:
        batch["webhookConfig"] = webhook_config
    model = "slow-echo" if cancel else "gemini-2.5-flash"
    created = ok(
        await client.post(f"/v1/models/{model}:batchGenerateContent", json={"batch": batch})
    )
    if cancel:
        ok(await client.post(f"/v1/{created['name']}:cancel"))
    deadline = time.monotonic() + 30
    while True:
        op: dict[str, Any] = ok(await client.get(f"/v1/{created['name']}"))
        if op.get("done"):
            return op
        assert time.monotonic() < deadline, op
        await asyncio.sleep(0.02)


# ------------------------------------------------------------------------ the API


def test_webhook_crud_speaks_the_sdk_wire(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path, allow_private_addresses=True) as (client, _):
            hook = await create_hook(
                client, "https://example.com/a", ["batch.succeeded", "batch.failed"], name="mine"
            )
            secret = hook["new_signing_secret"]
            assert secret.startswith("whsec_") and len(secret) > 40
            assert hook["state"] == "enabled" and hook["name"] == "mine"
            assert hook["subscribed_events"] == ["batch.succeeded", "batch.failed"]
            assert hook["create_time"].endswith("Z")
            [shown] = hook["signing_secrets"]
            assert secret.startswith(shown["truncated_secret"].removesuffix("..."))
            got = ok(await client.get(f"/v1/webhooks/{hook['id']}"))
            assert "new_signing_secret" not in got  # shown once
            assert {k: v for k, v in hook.items() if k != "new_signing_secret"} == got

            for i in range(3):
                await create_hook(client, f"https://example.com/{i}", ["batch.expired"])
            first = ok(await client.get("/v1/webhooks", params={"page_size": 3}))
            assert len(first["webhooks"]) == 3 and first["next_page_token"]
            rest = ok(
                await client.get(
                    "/v1beta/webhooks",
                    params={"pageSize": 3, "page_token": first["next_page_token"]},
                )
            )
            assert [w["id"] for w in rest["webhooks"]] == [hook["id"]]
            assert "next_page_token" not in rest

            changed = ok(
                await client.patch(
                    f"/v1/webhooks/{hook['id']}",
                    params={"update_mask": "state"},
                    json={"state": "disabled", "uri": "https://ignored.example"},
                )
            )
            assert changed["state"] == "disabled" and changed["uri"] == "https://example.com/a"
            changed = ok(
                await client.patch(
                    f"/v1/webhooks/{hook['id']}",
                    json={"uri": "https://example.org/b", "subscribedEvents": ["batch.cancelled"]},
                )
            )
            assert changed["uri"] == "https://example.org/b"
            assert changed["subscribed_events"] == ["batch.cancelled"]
            assert changed["state"] == "disabled"

            rotated = ok(await client.post(f"/v1/webhooks/{hook['id']}:rotateSigningSecret"))
            assert rotated["secret"].startswith("whsec_") and rotated["secret"] != secret
            secrets = ok(await client.get(f"/v1/webhooks/{hook['id']}"))["signing_secrets"]
            assert len(secrets) == 2 and secrets[0]["expire_time"].endswith("Z")

            ok(await client.delete(f"/v1/webhooks/{hook['id']}"))
            assert refused(await client.get(f"/v1/webhooks/{hook['id']}"), 404)

    run(main())


def test_bad_webhooks_are_refused_with_the_fix(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path) as (client, _):
            post = client.post
            message = refused(await post("/v1/webhooks", json={"uri": "https://e.com/x"}))
            assert "subscribed_events is required" in message
            message = refused(
                await post(
                    "/v1/webhooks",
                    json={"uri": "https://e.com/x", "subscribed_events": ["batch.completed"]},
                )
            )
            assert "unknown event 'batch.completed'" in message and "batch.succeeded" in message
            message = refused(
                await post(
                    "/v1/webhooks",
                    json={"uri": "ftp://e.com/x", "subscribed_events": ["batch.failed"]},
                )
            )
            assert "http:// or https://" in message
            hook = await create_hook(client, "https://e.com/x", ["video.generated"])  # accepted
            message = refused(
                await client.patch(
                    f"/v1/webhooks/{hook['id']}",
                    json={"state": "disabled_due_to_failed_deliveries"},
                )
            )
            assert "set by Overnight only" in message
            message = refused(
                await client.patch(
                    f"/v1/webhooks/{hook['id']}", params={"update_mask": "id"}, json={}
                )
            )
            assert "cannot be updated" in message
            refused(await client.get("/v1/webhooks/nope"), 404)

    run(main())


def test_loopback_and_private_addresses_are_refused_by_default(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path) as (client, _):
            for uri in (
                "http://127.0.0.1:8080/hook",
                "http://localhost/hook",
                "http://[::1]/hook",
                "http://10.1.2.3/hook",
                "http://169.254.169.254/latest/meta-data",
            ):
                message = refused(
                    await client.post(
                        "/v1/webhooks", json={"uri": uri, "subscribed_events": ["batch.failed"]}
                    )
                )
                assert "webhooks.allow_private_addresses" in message, message
            body = {
                "batch": {
                    "inputConfig": {"requests": {"requests": [{"request": request("x")}]}},
                    "webhookConfig": {"uris": ["http://127.0.0.1:9/x"]},
                }
            }
            message = refused(await client.post("/v1/models/echo:batchGenerateContent", json=body))
            assert "batch.webhookConfig.uris[0]" in message
            assert "allow_private_addresses" in message

    run(main())


# ------------------------------------------------------------------- deliveries


def test_each_subscribed_event_arrives_signed(tmp_path: Path, database_url: str) -> None:
    async def main() -> None:
        with receiver() as rx:
            async with serving(tmp_path, database_url, **FAST) as (client, _):
                plain = await create_hook(client, rx.url, ["batch.succeeded", "batch.failed"])
                everything = await create_hook(
                    client, rx.url + "?all", ["batch.succeeded", "batch.cancelled"]
                )
                done = await run_batch(client, ["hello"])
                assert done["metadata"]["state"] == "BATCH_STATE_SUCCEEDED"
                got = await rx.wait_for(2)
                by_path = {r.headers["Host"] + str(i): r for i, r in enumerate(got)}
                assert len(by_path) == 2
                secrets = [plain["new_signing_secret"], everything["new_signing_secret"]]
                payloads = []
                for item in got:
                    verified = [s for s in secrets if _verifies(item, s)]
                    assert len(verified) == 1, "each delivery is signed with its webhook's secret"
                    payloads.append(item.verified(verified[0]))
                    assert item.headers["content-type"] == "application/json"
                    assert item.headers["webhook-id"].startswith("evt_")
                    assert abs(int(item.headers["webhook-timestamp"]) - time.time()) < 60
                    assert item.headers["webhook-signature"].startswith("v1,")
                assert got[0].headers["webhook-id"] == got[1].headers["webhook-id"]  # one event
                for payload in payloads:
                    assert payload["type"] == "batch.succeeded"
                    assert payload["version"] == "v1"
                    assert payload["timestamp"].endswith("Z")
                    assert payload["data"]["id"] == done["name"]
                    assert payload["data"]["state"] == "BATCH_STATE_SUCCEEDED"
                    assert "error_code" not in payload["data"]
                # batch.cancelled is an extension: only the webhook that asked gets it.
                cancelled = await run_batch(client, ["a"] * 50, cancel=True)
                assert cancelled["metadata"]["state"] == "BATCH_STATE_CANCELLED"
                [*_, last] = await rx.wait_for(3)
                body = last.verified(everything["new_signing_secret"])
                assert body["type"] == "batch.cancelled" and body["data"]["error_code"] == 1
                await asyncio.sleep(0.3)
                assert len(rx.received) == 3

    run(main())


def _verifies(item: Received, secret: str) -> bool:
    try:
        item.verified(secret)
    except WebhookVerificationError:
        return False
    return True


def test_failed_deliveries_are_retried_with_backoff(tmp_path: Path) -> None:
    async def main() -> None:
        with receiver([500, 503]) as rx:
            async with serving(tmp_path, **FAST) as (client, runtime):
                hook = await create_hook(client, rx.url, ["batch.succeeded"])
                await run_batch(client, ["retry me"])
                got = await rx.wait_for(3)
                assert len({r.headers["webhook-id"] for r in got}) == 1  # the same message
                assert len({r.body for r in got}) == 1  # byte for byte
                for item in got:
                    item.verified(hook["new_signing_secret"])
                await asyncio.sleep(0.3)
                assert len(rx.received) == 3
                [entry] = await runtime.store.outbox.list_outbox()
                assert (entry.state, entry.attempts) == (DeliveryState.DELIVERED, 3)
                hook_now = ok(await client.get(f"/v1/webhooks/{hook['id']}"))
                assert hook_now["state"] == "enabled"

    run(main())


def test_an_event_is_given_up_after_its_retry_window(tmp_path: Path) -> None:
    async def main() -> None:
        with receiver([500] * 1000) as rx:
            window = {**FAST, "retry_window_hours": 0.5 / 3600}
            async with serving(tmp_path, **window) as (client, runtime):
                await create_hook(client, rx.url, ["batch.succeeded"])
                await run_batch(client, ["x"])
                deadline = time.monotonic() + 20
                while True:
                    [entry] = await runtime.store.outbox.list_outbox()
                    if entry.state is DeliveryState.FAILED:
                        break
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
                assert entry.last_error == "the receiver answered HTTP 500"
                assert entry.attempts >= 2

    run(main())


def test_a_webhook_that_keeps_failing_is_disabled(tmp_path: Path) -> None:
    async def main() -> None:
        with receiver([500] * 1000) as rx:
            policy = {**FAST, "disable_after_failures": 3, "disable_after_hours": 0.0}
            async with serving(tmp_path, **policy) as (client, runtime):
                hook = await create_hook(client, rx.url, ["batch.succeeded"])
                await run_batch(client, ["x"])
                deadline = time.monotonic() + 20
                while True:
                    state = ok(await client.get(f"/v1/webhooks/{hook['id']}"))["state"]
                    if state == "disabled_due_to_failed_deliveries":
                        break
                    assert time.monotonic() < deadline, state
                    await asyncio.sleep(0.05)
                assert len(rx.received) == 3
                [entry] = await runtime.store.outbox.list_outbox()
                assert entry.state is DeliveryState.FAILED
                # Disabled: the next batch sends it nothing. Enabled again: it does.
                await run_batch(client, ["y"])
                await asyncio.sleep(0.3)
                assert len(rx.received) == 3
                rx.statuses.clear()
                ok(await client.patch(f"/v1/webhooks/{hook['id']}", json={"state": "enabled"}))
                await run_batch(client, ["z"])
                [*_, last] = await rx.wait_for(4)
                assert last.verified(hook["new_signing_secret"])["type"] == "batch.succeeded"

    run(main())


def test_a_batch_webhook_config_replaces_registered_webhooks(tmp_path: Path) -> None:
    async def main() -> None:
        with receiver() as registered, receiver() as own:
            async with serving(tmp_path, **FAST) as (client, _):
                await create_hook(client, registered.url, ["batch.succeeded"])
                config = {"uris": [own.url], "user_metadata": {"job": "nightly", "n": 3}}
                done = await run_batch(client, ["mine"], webhook_config=config)
                [item] = await own.wait_for(1)
                secret = ok(await client.get("/v1beta/webhooks:dynamicSigningSecret"))["secret"]
                body = item.verified(secret)
                assert body["type"] == "batch.succeeded"
                assert body["data"]["id"] == done["name"]
                assert body["data"]["user_metadata"] == {"job": "nightly", "n": 3}
                # userMetadata alone (camelCase too) keeps the registered webhooks.
                await run_batch(client, ["theirs"], webhook_config={"userMetadata": {"k": 1}})
                [item] = await registered.wait_for(1)
                assert json.loads(item.body)["data"]["user_metadata"] == {"k": 1}
                await asyncio.sleep(0.3)
                assert len(own.received) == 1 and len(registered.received) == 1

    run(main())


def test_rotation_signs_with_both_secrets_for_a_while(tmp_path: Path) -> None:
    async def main() -> None:
        with receiver() as rx:
            async with serving(tmp_path, **FAST) as (client, _):
                hook = await create_hook(client, rx.url, ["batch.succeeded"])
                new = ok(await client.post(f"/v1/webhooks/{hook['id']}:rotateSigningSecret"))
                ok(await client.post(f"/v1/webhooks/{hook['id']}:ping"))
                [ping] = await rx.wait_for(1)
                assert len(ping.headers["webhook-signature"].split(" ")) == 2
                assert ping.verified(hook["new_signing_secret"])["type"] == "webhook.ping"
                assert ping.verified(new["secret"])["data"] == {"id": f"webhooks/{hook['id']}"}
                now = ok(
                    await client.post(
                        f"/v1/webhooks/{hook['id']}:rotateSigningSecret",
                        json={"revocation_behavior": "revoke_previous_secrets_immediately"},
                    )
                )
                ok(await client.post(f"/v1/webhooks/{hook['id']}:ping"))
                [_, second] = await rx.wait_for(2)
                second.verified(now["secret"])
                with pytest.raises(WebhookVerificationError):
                    second.verified(new["secret"])

    run(main())


def test_delivery_to_a_name_resolving_to_loopback_is_refused(tmp_path: Path) -> None:
    """A create checks literal addresses only; each delivery checks what the host name
    resolves to (here a resolver that maps it to loopback, where the receiver is)."""

    async def loopback(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    async def main() -> None:
        with receiver() as rx:
            fast = {**FAST, "allow_private_addresses": False}
            async with serving(tmp_path, dispatch=False, **fast) as (client, runtime):
                port = rx.url.split(":")[2].split("/")[0]
                config = {"uris": [f"http://receiver.example:{port}/hook"]}
                await run_batch(client, ["x"], webhook_config=config)
                dispatcher = runtime.webhook_dispatcher()
                dispatcher.sender.resolver = loopback
                assert await dispatcher.deliver_due() == 1
                await dispatcher.sender.close()
                [entry] = await runtime.store.outbox.list_outbox()
                assert (entry.state, entry.attempts) == (DeliveryState.PENDING, 1)
                assert "receiver.example (127.0.0.1) is a loopback address" in (
                    entry.last_error or ""
                )
                assert "allow_private_addresses" in (entry.last_error or "")
                assert rx.received == []

    run(main())


def _example_receiver() -> Any:
    path = Path(__file__).parents[2] / "examples" / "webhook_receiver.py"
    spec = importlib.util.spec_from_file_location("webhook_receiver_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_documented_receiver_verifies_and_drops_repeats(tmp_path: Path) -> None:
    example = _example_receiver()

    async def main() -> None:
        async with serving(tmp_path, dispatch=False, **FAST) as (client, runtime):
            handled: list[dict[str, Any]] = []
            hook = await create_hook(client, "http://127.0.0.1:1/placeholder", ["batch.succeeded"])
            server = example.make_server(
                "127.0.0.1", 0, [hook["new_signing_secret"]], handle=handled.append
            )
            thread = threading.Thread(target=server.serve_forever, daemon=True)
            thread.start()
            try:
                url = f"http://127.0.0.1:{server.server_port}/"
                ok(await client.patch(f"/v1/webhooks/{hook['id']}", json={"uri": url}))
                done = await run_batch(client, ["documented"])
                dispatcher = runtime.webhook_dispatcher()
                assert await dispatcher.deliver_due() == 1
                [entry] = await runtime.store.outbox.list_outbox()
                assert entry.state is DeliveryState.DELIVERED
                # The same delivery again (at-least-once): verified, answered, not handled.
                again = Delivery(
                    id=entry.id,
                    event_id=entry.event_id,
                    event_type=entry.event_type,
                    tenant=entry.tenant,
                    webhook_id=entry.webhook_id,
                    uri=url,
                    payload=entry.payload,
                    secrets=(hook["new_signing_secret"],),
                    attempts=entry.attempts,
                    create_time=time.time(),
                )
                outcome = await dispatcher.sender.send(again, time.time())
                assert outcome.delivered
                await dispatcher.sender.close()
                [event] = handled
                assert event["type"] == "batch.succeeded" and event["data"]["id"] == done["name"]
                # A forged body is refused.
                forged = httpx.post(
                    url,
                    content=b'{"type":"batch.succeeded"}',
                    headers={
                        "webhook-id": "evt_x",
                        "webhook-timestamp": str(int(time.time())),
                        "webhook-signature": "v1,AAAA",
                    },
                )
                assert forged.status_code == 400
            finally:
                server.shutdown()
                server.server_close()

    run(main())
