"""One delivery attempt (``engine/delivery.py``) and the retry schedule
(``engine/dispatcher.py``), without a network: httpx's ``MockTransport`` receives."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import httpx
import pytest
from standardwebhooks import Webhook as Verifier

from overnight.config import WebhookSettings
from overnight.domain.webhooks import Delivery, address_problem, new_signing_secret
from overnight.engine.delivery import Sender, signature_headers
from overnight.engine.dispatcher import WebhookDispatcher


def delivery(uri: str = "https://hooks.example.com:8443/in?x=1", **kw: object) -> Delivery:
    values: dict[str, object] = {
        "id": "dlv_1",
        "event_id": "evt_1",
        "event_type": "batch.succeeded",
        "tenant": "t",
        "webhook_id": "w",
        "uri": uri,
        "payload": '{"type":"batch.succeeded","data":{"id":"batches/b"}}',
        "secrets": (new_signing_secret(),),
        "attempts": 0,
        "create_time": time.time(),
    }
    values.update(kw)
    return Delivery(**values)  # type: ignore[arg-type]


def send(
    settings: WebhookSettings, d: Delivery, answer: int = 200, resolved: list[str] | None = None
):  # type: ignore[no-untyped-def]
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(answer, headers={"retry-after": "120"})

    async def resolver(host: str, port: int) -> list[str]:
        return resolved or ["93.184.216.34"]

    async def go():  # type: ignore[no-untyped-def]
        sender = Sender(settings, transport=httpx.MockTransport(handler), resolver=resolver)
        try:
            return await sender.send(d, time.time())
        finally:
            await sender.close()

    return asyncio.run(go()), seen


def test_the_signature_is_standard_webhooks() -> None:
    d = delivery(secrets=(new_signing_secret(), new_signing_secret()))
    headers = signature_headers(d, time.time())
    assert headers["webhook-id"] == "evt_1"
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in d.secrets:
        assert Verifier(secret).verify(d.payload, headers) == {
            "type": "batch.succeeded",
            "data": {"id": "batches/b"},
        }


def test_a_public_host_is_pinned_to_the_checked_address() -> None:
    outcome, [sent] = send(WebhookSettings(), delivery())
    assert outcome.delivered
    assert sent.url.host == "93.184.216.34" and sent.url.port == 8443
    assert sent.url.path == "/in" and sent.url.query == b"x=1"
    assert sent.headers["host"] == "hooks.example.com:8443"
    assert sent.extensions["sni_hostname"] == "hooks.example.com"
    assert sent.content == delivery().payload.encode()
    assert sent.headers["user-agent"].startswith("Overnight-Webhooks/")


@pytest.mark.parametrize(
    "resolved", [["127.0.0.1"], ["93.184.216.34", "10.0.0.7"], ["::1"], ["fd00::1"]]
)
def test_any_private_address_refuses_the_delivery(resolved: list[str]) -> None:
    outcome, sent = send(WebhookSettings(), delivery(), resolved=resolved)
    assert not outcome.delivered and sent == []
    assert "webhooks.allow_private_addresses" in (outcome.error or "")


def test_allowing_private_addresses_skips_the_check() -> None:
    settings = WebhookSettings(allow_private_addresses=True)
    outcome, [sent] = send(settings, delivery("http://127.0.0.1:9/x"), resolved=["127.0.0.1"])
    assert outcome.delivered and sent.url.host == "127.0.0.1"


def test_a_non_2xx_answer_is_a_failure_with_its_retry_after() -> None:
    outcome, _ = send(WebhookSettings(), delivery(), answer=429)
    assert not outcome.delivered
    assert outcome.error == "the receiver answered HTTP 429"
    assert outcome.retry_after_s == 120.0
    outcome, _ = send(WebhookSettings(), delivery(), answer=302)  # redirects are not followed
    assert not outcome.delivered


def test_address_policy() -> None:
    assert address_problem("8.8.8.8") is None
    assert address_problem("2001:4860:4860::8888") is None
    for private in ("127.0.0.1", "10.1.1.1", "192.168.0.1", "172.16.0.1", "100.64.0.1"):
        assert address_problem(private) is not None, private
    assert address_problem("169.254.169.254") == "a link-local address"
    assert address_problem("::ffff:127.0.0.1") == "a loopback address"


def test_the_backoff_doubles_with_jitter_and_stops_at_the_window() -> None:
    settings = WebhookSettings(
        retry_initial_seconds=5, retry_max_seconds=3600, retry_window_hours=24
    )
    dispatcher = WebhookDispatcher(
        _NoOutbox(), settings, sender=Sender(settings), jitter=lambda: 0.5
    )
    now = 1000.0
    made = delivery(create_time=now)
    delays = [dispatcher.retry_at(replace(made, attempts=n), now, None) for n in range(12)]
    assert [round(d - now) for d in delays if d is not None][:5] == [5, 10, 20, 40, 80]
    assert max(d - now for d in delays if d is not None) == 3600  # capped
    # Retry-After is honoured (up to the cap); past the window the event is given up.
    assert dispatcher.retry_at(made, now, 600) == now + 600
    assert dispatcher.retry_at(made, now + 24 * 3600, None) is None
    jittery = WebhookDispatcher(_NoOutbox(), settings, sender=Sender(settings), jitter=lambda: 1.0)
    assert jittery.retry_at(made, now, None) == pytest.approx(now + 6.0)


class _NoOutbox:
    """Not used by ``retry_at``; stands in for the store."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"the outbox was used: {name}")
