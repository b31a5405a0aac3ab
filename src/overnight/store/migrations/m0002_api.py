"""0002: API keys (hashed) and resumable upload sessions."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Connection, Float, MetaData, String, Table, Text


def upgrade(conn: Connection) -> None:
    # Frozen copies of the tables as of version 2 (tables.py may move on).
    meta = MetaData()
    Table(
        "api_keys",
        meta,
        Column("key_hash", String(64), primary_key=True),
        Column("tenant", String(128), nullable=False, index=True),
        Column("prefix", String(16), nullable=False),
        Column("create_time", Float, nullable=False),
    )
    Table(
        "uploads",
        meta,
        Column("id", String(64), primary_key=True),
        Column("tenant", String(128), nullable=False),
        Column("file_id", String(64), nullable=False),
        Column("display_name", Text, nullable=False, default=""),
        Column("mime_type", String(255), nullable=False),
        Column("size_bytes", BigInteger, nullable=False),
        Column("received", BigInteger, nullable=False, default=0),
        Column("expire_time", Float, nullable=False),
    )
    meta.create_all(conn)
