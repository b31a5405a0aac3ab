"""The metadata-store seams: one narrow protocol per client.

Services type against ``FileStore``, ``UploadStore``, ``BatchStore``, ``KeyStore`` and
``WebhookStore``; the engine against ``WorkQueue`` only, the webhook dispatcher against
``WebhookOutbox``. ``store/sql.py`` implements all of them over one
SQL database (SQLite or PostgreSQL), and ``tests/contract`` runs each protocol's
contract against both.

Every method is async and one transaction. Any method may raise ``StoreError`` (the
database failed or is unreachable) or ``StorageFull`` (the disk under it is full);
only the other errors are listed below.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from overnight.domain.batches import (
    Batch,
    BatchState,
    BatchWork,
    LeasedShard,
    Shard,
    ShardOutcome,
    ShardSpec,
)
from overnight.domain.files import File
from overnight.domain.uploads import Upload
from overnight.domain.webhooks import Delivery, DisablePolicy, OutboxEntry, Webhook

Page = tuple[float, str]  # (create_time, id) of the previous page's last row


class KeyStore(Protocol):
    """API keys: the hash of each key and the tenant it authenticates as."""

    async def add_api_key(self, key_hash: str, tenant: str, prefix: str, *, now: float) -> None:
        """Record a key by its hash. Raises ``AlreadyExists`` if the hash is recorded."""
        ...

    async def tenant_for_key(self, key_hash: str) -> str | None:
        """The tenant of the key with this hash; None if there is no such key."""
        ...

    async def count_api_keys(self) -> int:
        """How many keys exist (none: the server runs as a single user)."""
        ...


class FileStore(Protocol):
    """File records, per tenant. Their bytes live in the blob store."""

    async def create_file(self, file: File) -> None:
        """Record a file. Raises ``AlreadyExists`` if the tenant has one of that id."""
        ...

    async def get_file(self, file_id: str, tenant: str | None = None) -> File:
        """Raises ``NotFound``; another tenant's file is not found either."""
        ...

    async def list_files(self, tenant: str, *, limit: int, after: Page | None = None) -> list[File]:
        """A page of the tenant's files, newest first, after ``after``."""
        ...

    async def delete_file(self, file_id: str, tenant: str | None = None) -> File:
        """Delete the record and return it (the caller deletes the blob).

        Raises ``NotFound``, or ``FailedPrecondition`` while the file is the input of
        a batch not yet finalized; no batch can start on the file as it is deleted.
        """
        ...

    async def take_expired_files(self, now: float, *, limit: int = 1000) -> list[File]:
        """Delete up to ``limit`` expired files and return them (the caller deletes
        the blobs). The input of a batch not yet finalized is kept until it is."""
        ...


class UploadStore(Protocol):
    """Resumable upload sessions, each reserving its file's name until it finishes."""

    async def create_upload(self, upload: Upload) -> None:
        """Open a session. Raises ``AlreadyExists`` if the tenant's file name is taken
        by a file or by another open session."""
        ...

    async def get_upload(self, upload_id: str, *, now: float) -> Upload:
        """An open, unexpired session. Raises ``NotFound``."""
        ...

    async def advance_upload(
        self, upload_id: str, received: int, new_received: int, *, expire_time: float
    ) -> bool:
        """Move ``received`` (and the expiry) forward if it still is ``received``.
        True if it moved; False if a concurrent chunk moved it first."""
        ...

    async def finish_upload(self, upload_id: str, file: File) -> None:
        """Close the session and record its file, in one transaction.

        Raises ``NotFound`` if the session is gone, ``AlreadyExists`` (changing
        nothing) if a file of that name was recorded meanwhile.
        """
        ...

    async def delete_upload(self, upload_id: str) -> None:
        """Drop a session (cancelled or failed); a missing one is no error."""
        ...

    async def take_expired_uploads(self, now: float) -> list[Upload]:
        """Delete expired sessions and return them (the caller removes staging blobs)."""
        ...


class BatchStore(Protocol):
    """Batches as the services see them: create, read, list, cancel, delete."""

    async def create_batch(
        self, batch: Batch, input_blob: str, annotations: dict[str, Any] | None = None
    ) -> None:
        """Record a PENDING batch reading ``input_blob``. Raises ``AlreadyExists`` if
        its ``ref`` is taken, ``NotFound`` if its input file is gone."""
        ...

    async def get_batch(self, batch_id: str, tenant: str | None = None) -> Batch:
        """Raises ``NotFound``; another tenant's batch is not found either."""
        ...

    async def batch_input(self, batch_id: str) -> tuple[str, dict[str, Any]]:
        """The input blob key and annotations of a batch. Raises ``NotFound``."""
        ...

    async def find_batch_by_ref(self, ref: str) -> Batch | None:
        """The batch created with this ``ref`` (``overnight run``'s resume key)."""
        ...

    async def list_batches(
        self, tenant: str, *, limit: int, after: Page | None = None
    ) -> list[Batch]:
        """A page of the tenant's batches, newest first, after ``after``."""
        ...

    async def transition(
        self, batch_id: str, target: BatchState, *, now: float, error: str | None = None
    ) -> bool:
        """Move a batch to ``target`` if its state allows it. True if it moved."""
        ...

    async def delete_batch(self, batch_id: str, tenant: str | None = None) -> Batch:
        """Delete a batch and its shards; return it (the caller removes blobs).
        Raises ``NotFound``."""
        ...


class WorkQueue(Protocol):
    """What the engine's workers lease, run and commit.

    A worker claims a batch to admit or finalize it, or leases one of its shards to
    run. Leases carry an owner (a worker process) and expire; every change is
    conditional on still holding the lease, so a worker that lost one changes nothing.
    """

    def waiting_since(self) -> float | None:
        """When (``time.monotonic``) the oldest store call in flight began; None if
        idle. A long wait means the database is locked or unreachable."""
        ...

    async def claim_batch_work(
        self,
        owner: str,
        *,
        now: float,
        lease_until: float,
        models: Iterable[str] | None = None,
        batch_id: str | None = None,
    ) -> tuple[Batch, BatchWork] | None:
        """Lease one batch that needs admission or finalizing, and say which.

        A RUNNING batch is finalizable once all its shards are DONE; a terminal batch
        once no live lease remains on its shards. None when there is nothing to do.
        """
        ...

    async def release_batch(self, batch_id: str, owner: str) -> None:
        """Give a claimed batch back (a no-op unless ``owner`` holds it)."""
        ...

    async def batch_input(self, batch_id: str) -> tuple[str, dict[str, Any]]:
        """The input blob key and annotations of a batch. Raises ``NotFound``."""
        ...

    async def get_batch(self, batch_id: str) -> Batch:
        """The batch now (a worker re-reads its state). Raises ``NotFound``."""
        ...

    async def transition(
        self, batch_id: str, target: BatchState, *, now: float, error: str | None = None
    ) -> bool:
        """Move a batch to ``target`` if its state allows it. True if it moved."""
        ...

    async def admit(
        self, batch_id: str, owner: str, shards: Sequence[ShardSpec], *, now: float
    ) -> bool:
        """Record the shards and move PENDING → RUNNING. False if ``owner`` no longer
        holds the batch or it left PENDING."""
        ...

    async def finalize(
        self,
        batch_id: str,
        owner: str,
        *,
        now: float,
        output: File | None,
        target: BatchState | None,
        error: str | None = None,
        done_shards: int | None = None,
    ) -> bool:
        """Record the output file and, if ``target``, the final transition.

        False (nothing changed) if the lease was lost, the batch moved to a state
        ``target`` cannot be entered from, or a shard committed after the output was
        built from ``done_shards`` DONE shards. Raises ``AlreadyExists`` if the output
        file's id is taken.
        """
        ...

    async def expire_batches(self, now: float) -> list[str]:
        """Move batches past their deadline to EXPIRED; return their ids."""
        ...

    async def lease_shard(
        self,
        owner: str,
        token: str,
        *,
        now: float,
        lease_until: float,
        models: Iterable[str] | None = None,
        batch_id: str | None = None,
    ) -> LeasedShard | None:
        """Lease the next runnable shard (PENDING, or its lease expired) of a RUNNING,
        not overdue batch, with everything needed to run it. None if there is none."""
        ...

    async def renew_shard(self, batch_id: str, seq: int, token: str, lease_until: float) -> bool:
        """Extend a lease we hold. False if it was lost (expired and taken)."""
        ...

    async def count_failed_attempt(self, batch_id: str, seq: int, token: str) -> int | None:
        """Count one failed attempt at a shard we hold; its failures so far (None: the
        lease was lost). A lease lost to a crash or shutdown is not an attempt."""
        ...

    async def release_shard(self, batch_id: str, seq: int, token: str) -> bool:
        """Give a leased shard back unfinished. False if the lease was lost."""
        ...

    async def commit_shard(
        self, batch_id: str, seq: int, token: str, outcome: ShardOutcome, *, now: float
    ) -> bool:
        """Mark the shard DONE and add its counters to the batch.

        False if the lease was lost or the batch is finalized: the caller discards its
        output. Committing again what was committed returns True and adds nothing.
        """
        ...

    async def list_shards(self, batch_id: str) -> list[Shard]:
        """The batch's shards in input order."""
        ...

    async def lease_owners(self) -> set[str]:
        """Owners of live or stale leases, for recovering those of dead processes."""
        ...

    async def release_owner(self, owner: str) -> int:
        """Release every lease ``owner`` holds; return how many shards it held."""
        ...


class WebhookStore(Protocol):
    """Registered webhooks, per tenant (the webhook service)."""

    async def create_webhook(self, webhook: Webhook, *, max_per_tenant: int) -> None:
        """Record a webhook. Raises ``FailedPrecondition`` when its tenant already has
        ``max_per_tenant``."""
        ...

    async def get_webhook(self, webhook_id: str, tenant: str | None = None) -> Webhook:
        """Raises ``NotFound``; another tenant's webhook is not found either."""
        ...

    async def list_webhooks(
        self, tenant: str, *, limit: int, after: Page | None = None
    ) -> list[Webhook]:
        """A page of the tenant's webhooks, newest first, after ``after``."""
        ...

    async def update_webhook(
        self, webhook_id: str, tenant: str, changes: Mapping[str, Any], *, now: float
    ) -> Webhook:
        """Apply ``changes`` (``name``, ``uri``, ``subscribed_events``, ``state``) in one
        transaction and return the webhook as it now is. Enabling it clears its count of
        failed deliveries. Raises ``NotFound``."""
        ...

    async def rotate_webhook_secret(
        self,
        webhook_id: str,
        tenant: str,
        secret: str,
        *,
        now: float,
        keep_previous_until: float | None,
    ) -> Webhook:
        """Add a signing secret; the others keep signing until ``keep_previous_until``
        (None: they stop now). Raises ``NotFound``."""
        ...

    async def delete_webhook(self, webhook_id: str, tenant: str | None = None) -> Webhook:
        """Delete a webhook and its undelivered events; return it. Raises ``NotFound``."""
        ...

    async def enqueue_ping(self, webhook_id: str, tenant: str, *, now: float) -> None:
        """Queue a ``webhook.ping`` event to the webhook. Raises ``NotFound``, or
        ``FailedPrecondition`` when it is not enabled."""
        ...

    async def dynamic_secret(self, tenant: str, *, now: float) -> str:
        """The secret that signs deliveries to the tenant's batches' own
        ``webhookConfig`` URIs; made on first use, the same afterwards."""
        ...


class WebhookOutbox(Protocol):
    """What the webhook dispatcher leases and records.

    Rows are written by the batch transitions themselves (in their transactions);
    the dispatcher leases due rows, POSTs them and records each attempt, conditional
    on its lease token, so a dispatcher that died or lost its lease changes nothing.
    """

    async def lease_deliveries(
        self, token: str, *, now: float, lease_until: float, limit: int
    ) -> list[Delivery]:
        """Lease up to ``limit`` due deliveries until ``lease_until``, with their target
        URI and live signing secrets. Rows whose webhook is gone or not enabled are
        finished as FAILED instead."""
        ...

    async def finish_attempt(
        self,
        delivery: Delivery,
        *,
        now: float,
        delivered: bool,
        error: str | None = None,
        retry_at: float | None = None,
        policy: DisablePolicy,
    ) -> bool:
        """Record an attempt: delivered, or due again at ``retry_at`` (None: given up).
        Failures count against the webhook; True when ``policy`` disabled it now."""
        ...

    async def prune_deliveries(self, before: float) -> int:
        """Delete deliveries that finished before ``before``; return how many."""
        ...

    async def list_outbox(self, tenant: str | None = None) -> list[OutboxEntry]:
        """Every outbox row (of ``tenant``), oldest first."""
        ...
