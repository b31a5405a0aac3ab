"""0001: the initial schema (files, batches, shards)."""

from __future__ import annotations

from sqlalchemy import Connection

from overnight.store import tables


def upgrade(conn: Connection) -> None:
    # The first migration creates the schema as tables.py defined it at version 1.
    # Later migrations must be explicit ALTERs, so this one stays valid.
    for table in (tables.files, tables.batches, tables.shards):  # as of version 1
        table.create(conn, checkfirst=True)
