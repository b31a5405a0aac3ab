"""The engine's work queue in SQL: batch and shard leases, admission, commits, finalize.

Each method is one transaction. State changes are conditional UPDATEs (``WHERE
state IN …`` / ``WHERE lease_token = …``) and report whether they won, so two
workers racing for the same shard or transition cannot both succeed. On
PostgreSQL, leasing uses ``FOR UPDATE SKIP LOCKED``; on SQLite every transaction
already holds the write lock (``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, and_, exists, insert, not_, or_, select, update

from overnight.domain.batches import (
    Batch,
    BatchState,
    BatchWork,
    LeasedShard,
    Shard,
    ShardOutcome,
    ShardSpec,
    ShardState,
    allowed_sources,
)
from overnight.domain.files import File
from overnight.store import tables as t
from overnight.store.batches import SqlBatchStore
from overnight.store.db import Database
from overnight.store.outbox import enqueue_batch_events
from overnight.store.rows import file_values, to_batch, to_shard
from overnight.store.sqlhelpers import TERMINAL, count_done, lock_batch


class SqlWorkQueue:
    """The ``WorkQueue`` over a ``Database``."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._batches = SqlBatchStore(db)

    def waiting_since(self) -> float | None:
        return self._db.waiting_since()

    # ------------------------------------------------------- the batches it works on

    async def get_batch(self, batch_id: str) -> Batch:
        return await self._batches.get_batch(batch_id)

    async def batch_input(self, batch_id: str) -> tuple[str, dict[str, Any]]:
        return await self._batches.batch_input(batch_id)

    async def transition(
        self, batch_id: str, target: BatchState, *, now: float, error: str | None = None
    ) -> bool:
        return await self._batches.transition(batch_id, target, now=now, error=error)

    async def expire_batches(self, now: float) -> list[str]:
        """Move batches past their deadline to EXPIRED; return their ids. Their webhook
        deliveries are written to the outbox in the same transaction."""
        sources = [s.value for s in allowed_sources(BatchState.EXPIRED)]

        def q(conn: Connection) -> list[str]:
            ids = list(
                conn.execute(
                    select(t.batches.c.id).where(
                        t.batches.c.state.in_(sources), t.batches.c.expire_time < now
                    )
                ).scalars()
            )
            if not ids:
                return ids
            # RETURNING: only the batches this UPDATE moved (a racing cancel may win one).
            expired = list(
                conn.execute(
                    update(t.batches)
                    .where(t.batches.c.id.in_(ids), t.batches.c.state.in_(sources))
                    .values(
                        state=BatchState.EXPIRED.value,
                        update_time=now,
                        end_time=now,
                        error="the batch did not finish before its deadline",
                    )
                    .returning(t.batches.c.id)
                ).scalars()
            )
            enqueue_batch_events(conn, expired, BatchState.EXPIRED, now)
            return expired

        return await self._db.run(q)

    # --------------------------------------------------------- batch-level leases

    async def claim_batch_work(
        self,
        owner: str,
        *,
        now: float,
        lease_until: float,
        models: Iterable[str] | None = None,
        batch_id: str | None = None,
    ) -> tuple[Batch, BatchWork] | None:
        """Lease one batch that needs admission (``ADMIT``) or finalizing (``FINALIZE``).

        A RUNNING batch is finalizable once all its shards are DONE; a terminal batch
        (cancelled, expired, failed) once no live lease remains on its shards.
        """
        b, s = t.batches, t.shards
        free = or_(b.c.lease_owner.is_(None), b.c.lease_expires < now)
        open_shards = exists().where(s.c.batch_id == b.c.id, s.c.state != ShardState.DONE.value)
        live_shards = exists().where(
            s.c.batch_id == b.c.id, s.c.state == ShardState.LEASED.value, s.c.lease_expires >= now
        )
        # An overdue batch is never admitted or run: the reaper expires it instead,
        # whichever of the two a worker happens to reach first.
        admit = and_(
            b.c.state == BatchState.PENDING.value, not_(b.c.admitted), b.c.expire_time >= now
        )
        finish = and_(
            not_(b.c.finalized),
            or_(
                and_(b.c.state == BatchState.RUNNING.value, b.c.admitted, not_(open_shards)),
                and_(b.c.state.in_(TERMINAL), not_(live_shards)),
            ),
        )
        model_list = list(models) if models is not None else None

        def q(conn: Connection) -> tuple[Batch, BatchWork] | None:
            stmt = select(t.batches).where(free, or_(admit, finish))
            if batch_id is not None:
                stmt = stmt.where(b.c.id == batch_id)
            if model_list is not None:
                stmt = stmt.where(b.c.model_resolved.in_(model_list))
            stmt = stmt.order_by(b.c.create_time).limit(1)
            if not self._db.is_sqlite:
                stmt = stmt.with_for_update(skip_locked=True)
            row = conn.execute(stmt).mappings().first()
            if row is None:
                return None
            conn.execute(
                update(b)
                .where(b.c.id == row["id"])
                .values(lease_owner=owner, lease_expires=lease_until)
            )
            batch = to_batch(row)
            work = BatchWork.ADMIT if batch.state is BatchState.PENDING else BatchWork.FINALIZE
            return batch, work

        return await self._db.run(q)

    async def release_batch(self, batch_id: str, owner: str) -> None:
        await self._db.run(
            lambda c: c.execute(
                update(t.batches)
                .where(t.batches.c.id == batch_id, t.batches.c.lease_owner == owner)
                .values(lease_owner=None, lease_expires=None)
            )
        )

    async def admit(
        self,
        batch_id: str,
        owner: str,
        shards: Sequence[ShardSpec],
        *,
        now: float,
    ) -> bool:
        """Record the shards and move PENDING → RUNNING, in one transaction."""
        request_count = sum(sp.request_count for sp in shards)

        def q(conn: Connection) -> bool:
            res = conn.execute(
                update(t.batches)
                .where(
                    t.batches.c.id == batch_id,
                    t.batches.c.state == BatchState.PENDING.value,
                    t.batches.c.lease_owner == owner,
                )
                .values(
                    state=BatchState.RUNNING.value,
                    admitted=True,
                    request_count=request_count,
                    update_time=now,
                    lease_owner=None,
                    lease_expires=None,
                )
            )
            if res.rowcount != 1:
                return False
            rows = [
                {
                    "batch_id": batch_id,
                    "seq": sp.seq,
                    "byte_start": sp.byte_start,
                    "byte_end": sp.byte_end,
                    "first_line": sp.first_line,
                    "request_count": sp.request_count,
                    "state": ShardState.PENDING.value,
                    "attempts": 0,
                    "succeeded_count": 0,
                    "failed_count": 0,
                    "prompt_tokens": 0,
                    "candidates_tokens": 0,
                }
                for sp in shards
            ]
            for i in range(0, len(rows), 1000):
                conn.execute(insert(t.shards), rows[i : i + 1000])
            return True

        return await self._db.run(q)

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
        """Record the output file and, if ``target``, the final transition. One transaction.

        Returns False (and changes nothing) if the lease was lost, the batch moved to a
        state ``target`` cannot be entered from, or (``done_shards``) a shard committed
        after the output was built from that many DONE shards: the caller tries again.
        """

        def q(conn: Connection) -> bool:
            # Lock the batch row first: commit_shard does the same, so a shard can never
            # be counted on one side of a finalize and missing from its output.
            lock_batch(conn, batch_id)
            if done_shards is not None and count_done(conn, batch_id) != done_shards:
                return False
            stmt = update(t.batches).where(
                t.batches.c.id == batch_id,
                t.batches.c.lease_owner == owner,
                not_(t.batches.c.finalized),
            )
            values: dict[str, Any] = {
                "finalized": True,
                "update_time": now,
                "lease_owner": None,
                "lease_expires": None,
                "output_file_id": output.id if output else None,
            }
            if target is not None:
                stmt = stmt.where(t.batches.c.state.in_([s.value for s in allowed_sources(target)]))
                values["state"] = target.value
                values["end_time"] = now
            if error is not None:
                values["error"] = error
            if conn.execute(stmt.values(**values)).rowcount != 1:
                return False  # nothing was written yet
            if output is not None:
                conn.execute(insert(t.files).values(**file_values(output)))
            if target is not None and target.terminal:
                enqueue_batch_events(conn, [batch_id], target, now)
            return True

        return await self._db.run(q)

    # --------------------------------------------------------------------- shards

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
        """Lease the next runnable shard: PENDING, or LEASED with an expired lease.

        Returns the shard with its batch and input blob key, read in the same
        transaction, so the worker can run it without reading the store again.
        """
        s, b = t.shards, t.batches
        model_list = list(models) if models is not None else None
        runnable = or_(
            s.c.state == ShardState.PENDING.value,
            and_(s.c.state == ShardState.LEASED.value, s.c.lease_expires < now),
        )

        def q(conn: Connection) -> LeasedShard | None:
            stmt = (
                select(s.c.batch_id, s.c.seq)
                .join(b, b.c.id == s.c.batch_id)
                .where(runnable, b.c.state == BatchState.RUNNING.value, b.c.expire_time >= now)
            )
            if batch_id is not None:
                stmt = stmt.where(s.c.batch_id == batch_id)
            if model_list is not None:
                stmt = stmt.where(b.c.model_resolved.in_(model_list))
            stmt = stmt.order_by(b.c.create_time, s.c.batch_id, s.c.seq).limit(1)
            if not self._db.is_sqlite:
                stmt = stmt.with_for_update(of=s, skip_locked=True)
            found = conn.execute(stmt).first()
            if found is None:
                return None
            key = (s.c.batch_id == found[0], s.c.seq == found[1])
            res = conn.execute(
                update(s)
                .where(*key, runnable)
                .values(
                    state=ShardState.LEASED.value,
                    lease_owner=owner,
                    lease_token=token,
                    lease_expires=lease_until,
                )
            )
            if res.rowcount != 1:
                return None
            row = conn.execute(select(s).where(*key)).mappings().one()
            batch = conn.execute(select(b).where(b.c.id == found[0])).mappings().one()
            return LeasedShard(to_shard(row), to_batch(batch), batch["input_blob"])

        return await self._db.run(q)

    async def renew_shard(self, batch_id: str, seq: int, token: str, lease_until: float) -> bool:
        """Extend a lease we hold. False if it was lost (expired and taken)."""

        def q(conn: Connection) -> bool:
            res = conn.execute(
                update(t.shards)
                .where(
                    t.shards.c.batch_id == batch_id,
                    t.shards.c.seq == seq,
                    t.shards.c.lease_token == token,
                    t.shards.c.state == ShardState.LEASED.value,
                )
                .values(lease_expires=lease_until)
            )
            return res.rowcount == 1

        return await self._db.run(q)

    async def count_failed_attempt(self, batch_id: str, seq: int, token: str) -> int | None:
        """Count one failed attempt at a shard we hold; return its failures so far.

        Only failures count: a lease lost to a crash or a shutdown is not an attempt.
        None if the lease was lost.
        """
        key = (t.shards.c.batch_id == batch_id, t.shards.c.seq == seq)

        def q(conn: Connection) -> int | None:
            res = conn.execute(
                update(t.shards)
                .where(
                    *key,
                    t.shards.c.lease_token == token,
                    t.shards.c.state == ShardState.LEASED.value,
                )
                .values(attempts=t.shards.c.attempts + 1)
            )
            if res.rowcount != 1:
                return None
            return int(conn.execute(select(t.shards.c.attempts).where(*key)).scalar_one())

        return await self._db.run(q)

    async def release_shard(self, batch_id: str, seq: int, token: str) -> bool:
        """Give a leased shard back unfinished, so another worker can take it now."""

        def q(conn: Connection) -> bool:
            res = conn.execute(
                update(t.shards)
                .where(
                    t.shards.c.batch_id == batch_id,
                    t.shards.c.seq == seq,
                    t.shards.c.lease_token == token,
                    t.shards.c.state == ShardState.LEASED.value,
                )
                .values(
                    state=ShardState.PENDING.value,
                    lease_owner=None,
                    lease_token=None,
                    lease_expires=None,
                )
            )
            return res.rowcount == 1

        return await self._db.run(q)

    async def commit_shard(
        self, batch_id: str, seq: int, token: str, outcome: ShardOutcome, *, now: float
    ) -> bool:
        """Mark a shard DONE and add its counters to the batch, in one transaction.

        Only the holder of the current lease can commit; a worker whose lease expired
        and was taken gets False and must discard its output. This is what makes each
        request counted exactly once. Committing again what was committed (a retry
        after the database dropped the reply) returns True and changes nothing.
        """

        def q(conn: Connection) -> bool:
            if lock_batch(conn, batch_id) is not False:
                return False  # finalized (or gone): its output no longer takes shards
            res = conn.execute(
                update(t.shards)
                .where(
                    t.shards.c.batch_id == batch_id,
                    t.shards.c.seq == seq,
                    t.shards.c.lease_token == token,
                    t.shards.c.state == ShardState.LEASED.value,
                )
                .values(
                    state=ShardState.DONE.value,
                    output_blob=outcome.output_blob,
                    lease_owner=None,
                    lease_expires=None,
                    succeeded_count=outcome.succeeded,
                    failed_count=outcome.failed,
                    prompt_tokens=outcome.usage.prompt_tokens,
                    candidates_tokens=outcome.usage.candidates_tokens,
                )
            )
            if res.rowcount != 1:
                # Committed already, if an earlier try's reply was lost with the connection.
                done = conn.execute(
                    select(t.shards.c.output_blob).where(
                        t.shards.c.batch_id == batch_id,
                        t.shards.c.seq == seq,
                        t.shards.c.state == ShardState.DONE.value,
                    )
                ).scalar()
                return done is not None and done == outcome.output_blob
            b = t.batches
            conn.execute(
                update(b)
                .where(b.c.id == batch_id)
                .values(
                    succeeded_count=b.c.succeeded_count + outcome.succeeded,
                    failed_count=b.c.failed_count + outcome.failed,
                    prompt_tokens=b.c.prompt_tokens + outcome.usage.prompt_tokens,
                    candidates_tokens=b.c.candidates_tokens + outcome.usage.candidates_tokens,
                    update_time=now,
                )
            )
            return True

        return await self._db.run(q)

    async def list_shards(self, batch_id: str) -> list[Shard]:
        def q(conn: Connection) -> list[Shard]:
            rows = conn.execute(
                select(t.shards).where(t.shards.c.batch_id == batch_id).order_by(t.shards.c.seq)
            ).mappings()
            return [to_shard(r) for r in rows]

        return await self._db.run(q)

    async def lease_owners(self) -> set[str]:
        """Owners of live-or-stale leases, for recovering those of dead processes."""

        def q(conn: Connection) -> set[str]:
            shard_owners = conn.execute(
                select(t.shards.c.lease_owner)
                .where(t.shards.c.state == ShardState.LEASED.value)
                .distinct()
            ).scalars()
            batch_owners = conn.execute(
                select(t.batches.c.lease_owner)
                .where(t.batches.c.lease_owner.is_not(None))
                .distinct()
            ).scalars()
            return {o for o in [*shard_owners, *batch_owners] if o}

        return await self._db.run(q)

    async def release_owner(self, owner: str) -> int:
        """Release every lease held by ``owner`` (shutdown, or a dead process)."""

        def q(conn: Connection) -> int:
            res = conn.execute(
                update(t.shards)
                .where(t.shards.c.lease_owner == owner, t.shards.c.state == ShardState.LEASED.value)
                .values(
                    state=ShardState.PENDING.value,
                    lease_owner=None,
                    lease_token=None,
                    lease_expires=None,
                )
            )
            conn.execute(
                update(t.batches)
                .where(t.batches.c.lease_owner == owner)
                .values(lease_owner=None, lease_expires=None)
            )
            return int(res.rowcount)

        return await self._db.run(q)
