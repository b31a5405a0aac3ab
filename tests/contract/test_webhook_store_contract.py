"""The webhook parts of the store contract, on SQLite and PostgreSQL alike.

``WebhookStore`` (registered webhooks, per tenant) and ``WebhookOutbox`` (the rows the
batch transitions write and the dispatcher leases). The outbox rows of a terminal
transition are written in its own transaction: a transition that does not happen
writes none, and one that does always has them.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import orjson
import pytest
from sqlalchemy import text
from tests.contract.test_store_contract import admitted, make_batch

from overnight.domain.batches import BatchState, BatchWork, ShardOutcome, Usage
from overnight.domain.files import File
from overnight.domain.webhooks import (
    DeliveryState,
    DisablePolicy,
    SigningSecret,
    Webhook,
    WebhookConfig,
    WebhookState,
    new_signing_secret,
)
from overnight.errors import FailedPrecondition, NotFound
from overnight.store.connect import create_sql_engine, normalize_url
from overnight.store.migrations import MIGRATIONS
from overnight.store.sql import SqlStore

NEVER = DisablePolicy(failures=1000, after_s=1e9)


@pytest.fixture
def store(database_url: str):  # type: ignore[no-untyped-def]
    s = asyncio.run(SqlStore.open(database_url))
    yield s
    asyncio.run(s.close())


def make_webhook(
    webhook_id: str,
    *,
    tenant: str = "t1",
    events: tuple[str, ...] = ("batch.succeeded", "batch.failed", "batch.expired"),
    state: WebhookState = WebhookState.ENABLED,
    created: float | None = None,
) -> Webhook:
    now = time.time() if created is None else created
    return Webhook(
        id=webhook_id,
        tenant=tenant,
        name=f"hook {webhook_id}",
        uri=f"https://example.com/{webhook_id}",
        subscribed_events=events,
        state=state,
        secrets=(SigningSecret(new_signing_secret(), now),),
        create_time=now,
        update_time=now,
    )


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


class TestWebhookStore:
    def test_create_get_list_per_tenant(self, store: SqlStore) -> None:
        hooks = store.webhooks
        for i in range(3):
            run(hooks.create_webhook(make_webhook(f"w{i}", created=100.0 + i), max_per_tenant=10))
        run(hooks.create_webhook(make_webhook("other", tenant="t2"), max_per_tenant=10))
        got = run(hooks.get_webhook("w1", "t1"))
        assert (got.id, got.tenant, got.name, got.create_time) == ("w1", "t1", "hook w1", 101.0)
        assert got.subscribed_events == ("batch.succeeded", "batch.failed", "batch.expired")
        assert got.state is WebhookState.ENABLED and len(got.secrets) == 1
        with pytest.raises(NotFound):
            run(hooks.get_webhook("other", "t1"))
        first = run(hooks.list_webhooks("t1", limit=2))
        assert [w.id for w in first] == ["w2", "w1"]
        rest = run(hooks.list_webhooks("t1", limit=2, after=(first[-1].create_time, "w1")))
        assert [w.id for w in rest] == ["w0"]

    def test_a_tenant_has_at_most_max_per_tenant(self, store: SqlStore) -> None:
        run(store.webhooks.create_webhook(make_webhook("a"), max_per_tenant=1))
        with pytest.raises(FailedPrecondition, match="delete one"):
            run(store.webhooks.create_webhook(make_webhook("b"), max_per_tenant=1))
        run(store.webhooks.create_webhook(make_webhook("c", tenant="t2"), max_per_tenant=1))

    def test_update_and_enabling_clears_failures(self, store: SqlStore) -> None:
        hooks = store.webhooks
        run(hooks.create_webhook(make_webhook("w"), max_per_tenant=10))
        changed = run(
            hooks.update_webhook(
                "w",
                "t1",
                {
                    "name": "n2",
                    "uri": "https://example.org/x",
                    "subscribed_events": ("batch.failed",),
                },
                now=5e9,
            )
        )
        assert (changed.name, changed.uri, changed.subscribed_events) == (
            "n2",
            "https://example.org/x",
            ("batch.failed",),
        )
        assert run(hooks.get_webhook("w", "t1")) == changed and changed.update_time == 5e9
        with pytest.raises(NotFound):
            run(hooks.update_webhook("w", "t2", {"name": "x"}, now=1.0))
        run(hooks.update_webhook("w", "t1", {"state": WebhookState.DISABLED}, now=1.0))
        enabled = run(hooks.update_webhook("w", "t1", {"state": WebhookState.ENABLED}, now=1.0))
        assert enabled.state is WebhookState.ENABLED and enabled.consecutive_failures == 0

    def test_rotation_keeps_or_drops_previous_secrets(self, store: SqlStore) -> None:
        hooks = store.webhooks
        run(hooks.create_webhook(make_webhook("w"), max_per_tenant=10))
        old = run(hooks.get_webhook("w", "t1")).secrets[0].secret
        now = time.time()
        kept = run(
            hooks.rotate_webhook_secret(
                "w", "t1", "whsec_new", now=now, keep_previous_until=now + 60
            )
        )
        assert [s.secret for s in kept.live_secrets(now)] == [old, "whsec_new"]
        assert [s.secret for s in kept.live_secrets(now + 61)] == ["whsec_new"]
        dropped = run(
            hooks.rotate_webhook_secret("w", "t1", "whsec_3", now=now, keep_previous_until=None)
        )
        assert [s.secret for s in dropped.secrets] == ["whsec_3"]

    def test_dynamic_secret_is_made_once_per_tenant(self, store: SqlStore) -> None:
        first = run(store.webhooks.dynamic_secret("t1", now=1.0))
        assert first.startswith("whsec_")
        assert run(store.webhooks.dynamic_secret("t1", now=2.0)) == first
        assert run(store.webhooks.dynamic_secret("t2", now=2.0)) != first

    def test_ping_and_delete(self, store: SqlStore) -> None:
        hooks = store.webhooks
        run(hooks.create_webhook(make_webhook("w"), max_per_tenant=10))
        run(hooks.enqueue_ping("w", "t1", now=time.time()))
        [entry] = run(store.outbox.list_outbox("t1"))
        assert entry.event_type == "webhook.ping" and entry.webhook_id == "w"
        assert orjson.loads(entry.payload)["data"] == {"id": "webhooks/w"}
        with pytest.raises(NotFound):
            run(hooks.enqueue_ping("w", "t2", now=1.0))
        run(hooks.update_webhook("w", "t1", {"state": WebhookState.DISABLED}, now=1.0))
        with pytest.raises(FailedPrecondition, match="enable it"):
            run(hooks.enqueue_ping("w", "t1", now=1.0))
        with pytest.raises(NotFound):
            run(hooks.delete_webhook("w", "t2"))
        assert run(hooks.delete_webhook("w", "t1")).id == "w"
        assert run(store.outbox.list_outbox("t1")) == []  # its pending deliveries went too
        with pytest.raises(NotFound):
            run(hooks.get_webhook("w", "t1"))


class TestOutboxWrites:
    """Terminal transitions write their deliveries in their own transaction."""

    def test_cancel_writes_only_for_subscribers_of_the_event(self, store: SqlStore) -> None:
        run(store.webhooks.create_webhook(make_webhook("plain"), max_per_tenant=10))
        run(
            store.webhooks.create_webhook(
                make_webhook("all", events=("batch.succeeded", "batch.cancelled")),
                max_per_tenant=10,
            )
        )
        run(
            store.webhooks.create_webhook(make_webhook("elsewhere", tenant="t2"), max_per_tenant=10)
        )
        run(store.batches.create_batch(make_batch("b1"), "in"))
        assert run(store.batches.transition("b1", BatchState.CANCELLED, now=time.time()))
        [entry] = run(store.outbox.list_outbox())
        assert (entry.webhook_id, entry.event_type, entry.tenant) == (
            "all",
            "batch.cancelled",
            "t1",
        )
        body = orjson.loads(entry.payload)
        assert body["type"] == "batch.cancelled" and body["version"] == "v1"
        assert body["data"]["id"] == "batches/b1"
        assert body["data"]["state"] == "BATCH_STATE_CANCELLED"
        assert body["data"]["error_code"] == 1
        # A transition that does not happen writes nothing.
        assert not run(store.batches.transition("b1", BatchState.CANCELLED, now=time.time()))
        assert len(run(store.outbox.list_outbox())) == 1

    def test_non_terminal_transitions_write_nothing(self, store: SqlStore) -> None:
        run(store.webhooks.create_webhook(make_webhook("w"), max_per_tenant=10))
        run(admitted(store.batches, store.queue, "b1"))
        assert run(store.outbox.list_outbox()) == []

    def test_finalize_succeeded_writes_the_responses_file(self, store: SqlStore) -> None:
        run(store.webhooks.create_webhook(make_webhook("w"), max_per_tenant=10))
        run(
            store.webhooks.create_webhook(
                make_webhook("off", state=WebhookState.DISABLED), max_per_tenant=10
            )
        )
        queue = store.queue
        run(admitted(store.batches, queue, "b1", n=1))
        lease = run(queue.lease_shard("w", "tok", now=time.time(), lease_until=time.time() + 60))
        assert lease is not None
        outcome = ShardOutcome("out0", 1, 0, Usage())
        assert run(queue.commit_shard("b1", 0, "tok", outcome, now=time.time()))
        claimed = run(queue.claim_batch_work("w", now=time.time(), lease_until=time.time() + 60))
        assert claimed is not None and claimed[1] is BatchWork.FINALIZE
        output = File.generated(
            id="batchb1",
            tenant="t1",
            display_name="r",
            size_bytes=1,
            sha256="0" * 64,
            blob_key="k",
            now=time.time(),
            retention_s=None,
        )
        assert run(
            queue.finalize(
                "b1",
                "w",
                now=time.time(),
                output=output,
                target=BatchState.SUCCEEDED,
                done_shards=1,
            )
        )
        [entry] = run(store.outbox.list_outbox())
        body = orjson.loads(entry.payload)
        assert (entry.webhook_id, body["type"]) == ("w", "batch.succeeded")
        assert body["data"]["file_name"] == "files/batchb1"
        assert body["data"]["state"] == "BATCH_STATE_SUCCEEDED"
        assert "error_code" not in body["data"]

    def test_expiry_writes_batch_expired(self, store: SqlStore) -> None:
        run(store.webhooks.create_webhook(make_webhook("w"), max_per_tenant=10))
        run(store.batches.create_batch(make_batch("old", expire=time.time() - 1), "in"))
        run(store.batches.create_batch(make_batch("young"), "in"))
        assert run(store.queue.expire_batches(time.time())) == ["old"]
        [entry] = run(store.outbox.list_outbox())
        body = orjson.loads(entry.payload)
        assert body["type"] == "batch.expired" and body["data"]["id"] == "batches/old"
        assert body["data"]["error_code"] == 4

    def test_a_batch_config_replaces_registered_webhooks(self, store: SqlStore) -> None:
        run(
            store.webhooks.create_webhook(
                make_webhook("w", events=("batch.failed", "batch.cancelled")), max_per_tenant=10
            )
        )
        config = WebhookConfig(("https://a.example/1", "https://b.example/2"), {"job": 7})
        run(store.batches.create_batch(replace(make_batch("b1"), webhook_config=config), "in"))
        assert run(store.batches.get_batch("b1")).webhook_config == config
        assert run(store.batches.transition("b1", BatchState.FAILED, now=time.time(), error="boom"))
        entries = run(store.outbox.list_outbox())
        assert sorted(e.uri or "" for e in entries) == list(config.uris)
        assert {e.webhook_id for e in entries} == {None}
        assert len({e.event_id for e in entries}) == 1  # one event, two targets
        body = orjson.loads(entries[0].payload)
        assert body["data"]["user_metadata"] == {"job": 7}
        assert body["data"]["error_message"] == "boom"
        # Its own URIs cannot subscribe to the batch.cancelled extension.
        run(store.batches.create_batch(replace(make_batch("b2"), webhook_config=config), "in"))
        assert run(store.batches.transition("b2", BatchState.CANCELLED, now=time.time()))
        assert len(run(store.outbox.list_outbox())) == 2

    def test_user_metadata_alone_keeps_registered_webhooks(self, store: SqlStore) -> None:
        run(store.webhooks.create_webhook(make_webhook("w"), max_per_tenant=10))
        config = WebhookConfig((), {"k": "v"})
        run(store.batches.create_batch(replace(make_batch("b1"), webhook_config=config), "in"))
        assert run(store.batches.transition("b1", BatchState.FAILED, now=time.time()))
        [entry] = run(store.outbox.list_outbox())
        assert entry.webhook_id == "w"
        assert orjson.loads(entry.payload)["data"]["user_metadata"] == {"k": "v"}


class TestOutboxLeases:
    def _event(self, store: SqlStore, batch_id: str = "b1", tenant: str = "t1") -> None:
        run(store.batches.create_batch(make_batch(batch_id, tenant=tenant), "in"))
        assert run(store.batches.transition(batch_id, BatchState.FAILED, now=time.time()))

    def test_lease_then_deliver(self, store: SqlStore) -> None:
        run(store.webhooks.create_webhook(make_webhook("w"), max_per_tenant=10))
        self._event(store)
        hook = run(store.webhooks.get_webhook("w", "t1"))
        now = time.time()
        [d] = run(store.outbox.lease_deliveries("tok", now=now, lease_until=now + 30, limit=10))
        assert (d.uri, d.webhook_id, d.event_type, d.attempts) == (hook.uri, "w", "batch.failed", 0)
        assert d.secrets == (hook.secrets[0].secret,)
        # Leased: nobody else gets it until the lease ends.
        assert (
            run(store.outbox.lease_deliveries("t2", now=now, lease_until=now + 30, limit=10)) == []
        )
        assert not run(
            store.outbox.finish_attempt(
                replace(d, token="stale"), now=now, delivered=True, policy=NEVER
            )
        )
        assert run(store.outbox.list_outbox())[0].state is DeliveryState.PENDING
        run(store.outbox.finish_attempt(d, now=now, delivered=True, policy=NEVER))
        [entry] = run(store.outbox.list_outbox())
        assert (entry.state, entry.attempts) == (DeliveryState.DELIVERED, 1)
        assert (
            run(store.outbox.lease_deliveries("t3", now=now + 99, lease_until=now + 130, limit=10))
            == []
        )

    def test_an_expired_lease_is_due_again(self, store: SqlStore) -> None:
        run(store.webhooks.create_webhook(make_webhook("w"), max_per_tenant=10))
        self._event(store)
        now = time.time()
        [first] = run(store.outbox.lease_deliveries("a", now=now, lease_until=now + 5, limit=10))
        [again] = run(
            store.outbox.lease_deliveries("b", now=now + 6, lease_until=now + 11, limit=10)
        )
        assert again.id == first.id and again.event_id == first.event_id
        # The first holder's result no longer counts.
        assert not run(
            store.outbox.finish_attempt(first, now=now + 7, delivered=True, policy=NEVER)
        )
        assert run(store.outbox.list_outbox())[0].state is DeliveryState.PENDING

    def test_failures_retry_then_give_up(self, store: SqlStore) -> None:
        run(store.webhooks.create_webhook(make_webhook("w"), max_per_tenant=10))
        self._event(store)
        now = time.time()
        [d] = run(store.outbox.lease_deliveries("a", now=now, lease_until=now + 5, limit=10))
        run(
            store.outbox.finish_attempt(
                d, now=now, delivered=False, error="HTTP 500", retry_at=now + 100, policy=NEVER
            )
        )
        [entry] = run(store.outbox.list_outbox())
        assert (entry.state, entry.attempts, entry.last_error) == (
            DeliveryState.PENDING,
            1,
            "HTTP 500",
        )
        assert entry.next_attempt_at == now + 100
        assert (
            run(store.outbox.lease_deliveries("b", now=now + 50, lease_until=now + 55, limit=10))
            == []
        )
        [d2] = run(
            store.outbox.lease_deliveries("c", now=now + 100, lease_until=now + 105, limit=10)
        )
        assert d2.attempts == 1
        run(
            store.outbox.finish_attempt(
                d2, now=now + 100, delivered=False, error="timeout", retry_at=None, policy=NEVER
            )
        )
        [entry] = run(store.outbox.list_outbox())
        assert (entry.state, entry.attempts, entry.last_error) == (
            DeliveryState.FAILED,
            2,
            "timeout",
        )
        assert run(store.webhooks.get_webhook("w", "t1")).consecutive_failures == 2
        assert run(store.outbox.prune_deliveries(now + 99)) == 0
        assert run(store.outbox.prune_deliveries(now + 101)) == 1

    def test_consecutive_failures_disable_the_webhook(self, store: SqlStore) -> None:
        run(store.webhooks.create_webhook(make_webhook("w"), max_per_tenant=10))
        for i in range(3):
            self._event(store, f"b{i}")
        policy = DisablePolicy(failures=2, after_s=0)
        now = time.time()
        leased = run(store.outbox.lease_deliveries("a", now=now, lease_until=now + 5, limit=2))
        assert len(leased) == 2
        assert not run(
            store.outbox.finish_attempt(
                leased[0], now=now, delivered=False, error="x", retry_at=now + 1, policy=policy
            )
        )
        assert run(
            store.outbox.finish_attempt(
                leased[1], now=now, delivered=False, error="x", retry_at=now + 1, policy=policy
            )
        )
        hook = run(store.webhooks.get_webhook("w", "t1"))
        assert hook.state is WebhookState.DISABLED_DUE_TO_FAILED_DELIVERIES
        states = {e.state for e in run(store.outbox.list_outbox())}
        assert states == {DeliveryState.FAILED}
        # Enabled again, it starts counting from zero; new events reach it.
        run(store.webhooks.update_webhook("w", "t1", {"state": WebhookState.ENABLED}, now=now))
        assert run(store.webhooks.get_webhook("w", "t1")).consecutive_failures == 0

    def test_a_success_resets_the_count(self, store: SqlStore) -> None:
        run(store.webhooks.create_webhook(make_webhook("w"), max_per_tenant=10))
        self._event(store, "b0")
        self._event(store, "b1")
        policy = DisablePolicy(failures=2, after_s=0)
        now = time.time()
        first, second = run(
            store.outbox.lease_deliveries("a", now=now, lease_until=now + 5, limit=2)
        )
        run(
            store.outbox.finish_attempt(
                first, now=now, delivered=False, error="x", retry_at=now + 1, policy=policy
            )
        )
        run(store.outbox.finish_attempt(second, now=now, delivered=True, policy=policy))
        hook = run(store.webhooks.get_webhook("w", "t1"))
        assert (hook.state, hook.consecutive_failures, hook.failing_since) == (
            WebhookState.ENABLED,
            0,
            None,
        )

    def test_rows_of_a_disabled_webhook_fail_at_lease(self, store: SqlStore) -> None:
        run(store.webhooks.create_webhook(make_webhook("w"), max_per_tenant=10))
        self._event(store)
        run(store.webhooks.update_webhook("w", "t1", {"state": WebhookState.DISABLED}, now=1.0))
        now = time.time()
        assert run(store.outbox.lease_deliveries("a", now=now, lease_until=now + 5, limit=5)) == []
        [entry] = run(store.outbox.list_outbox())
        assert entry.state is DeliveryState.FAILED and "disabled" in (entry.last_error or "")

    def test_dynamic_deliveries_are_signed_with_the_tenant_secret(self, store: SqlStore) -> None:
        config = WebhookConfig(("https://a.example/1",), None)
        run(store.batches.create_batch(replace(make_batch("b1"), webhook_config=config), "in"))
        assert run(store.batches.transition("b1", BatchState.EXPIRED, now=time.time()))
        now = time.time()
        [d] = run(store.outbox.lease_deliveries("a", now=now, lease_until=now + 5, limit=5))
        assert d.uri == "https://a.example/1" and d.webhook_id is None
        assert d.secrets == (run(store.webhooks.dynamic_secret("t1", now=now)),)
        run(
            store.outbox.finish_attempt(
                d, now=now, delivered=False, error="x", retry_at=now, policy=DisablePolicy(1, 0)
            )
        )
        assert (
            run(store.outbox.list_outbox())[0].state is DeliveryState.PENDING
        )  # no webhook to disable

    def test_concurrent_leases_never_share_a_row(self, store: SqlStore) -> None:
        run(store.webhooks.create_webhook(make_webhook("w"), max_per_tenant=10))
        for i in range(12):
            self._event(store, f"b{i}")
        now = time.time()

        async def both() -> list[list[str]]:
            results = await asyncio.gather(
                *(
                    store.outbox.lease_deliveries(f"tok{k}", now=now, lease_until=now + 30, limit=4)
                    for k in range(4)
                )
            )
            return [[d.id for d in r] for r in results]

        leased = run(both())
        ids = [i for r in leased for i in r]
        assert len(ids) == len(set(ids)) == 12


class TestWebhookMigration:
    def test_a_version_4_database_gains_webhooks(self, database_url: str) -> None:
        """Batches written before version 5 keep working and have no webhookConfig."""
        store = run(SqlStore.open(database_url))
        run(store.batches.create_batch(make_batch("old"), "in"))
        run(store.close())
        engine = create_sql_engine(normalize_url(database_url))
        with engine.begin() as conn:
            for table in ("webhook_outbox", "webhooks", "webhook_dynamic_secrets"):
                conn.execute(text(f"DROP TABLE {table}"))
            conn.execute(text("ALTER TABLE batches DROP COLUMN webhook_config"))
            conn.execute(text("DELETE FROM schema_migrations WHERE version = 5"))
        engine.dispose()
        store = run(SqlStore.open(database_url))
        try:
            assert run(store.schema_version()) == MIGRATIONS[-1][0]
            assert run(store.batches.get_batch("old")).webhook_config is None
            run(store.webhooks.create_webhook(make_webhook("w"), max_per_tenant=10))
            assert run(store.batches.transition("old", BatchState.CANCELLED, now=time.time()))
        finally:
            run(store.close())
