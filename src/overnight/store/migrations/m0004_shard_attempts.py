"""0004: ``shards.attempts`` counts failed attempts only, no longer every lease.

Counts written before this version include leases lost to crashes, which could fail
a shard's requests on its first real error. Unfinished shards start again from zero.
"""

from __future__ import annotations

from sqlalchemy import Connection, text


def upgrade(conn: Connection) -> None:
    conn.execute(text("UPDATE shards SET attempts = 0 WHERE state <> 'DONE'"))
