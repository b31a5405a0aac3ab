"""0003: file names per tenant; one open upload session per requested name.

``files`` is keyed by (tenant, id) instead of id, so two tenants may each hold a
``files/report`` and a taken name tells only its owner so. SQLite cannot change a
primary key in place: the table is rebuilt (renamed, recreated, copied, dropped).
PostgreSQL swaps the constraint. Existing rows, and the blob keys they name, are kept.

``uploads`` gets a unique (tenant, file_id): two sessions can no longer reserve the
same name at once. Duplicate open sessions, which the race this closes could leave,
are dropped first, all but the oldest-keyed one (their staged bytes go with the sweep
of ``uploads/``, or stay as inert files).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Float,
    MetaData,
    String,
    Table,
    Text,
    inspect,
    text,
)

COLUMNS = (
    "tenant, id, display_name, mime_type, size_bytes, sha256, blob_key, source, state, "
    "create_time, update_time, expire_time"
)


def _files_v3(meta: MetaData) -> Table:
    # Frozen copy of the files table as of version 3 (tables.py may move on).
    return Table(
        "files",
        meta,
        Column("tenant", String(128), primary_key=True, index=True),
        Column("id", String(64), primary_key=True),
        Column("display_name", Text, nullable=False, default=""),
        Column("mime_type", String(255), nullable=False),
        Column("size_bytes", BigInteger, nullable=False),
        Column("sha256", String(64), nullable=False),
        Column("blob_key", Text, nullable=False),
        Column("source", String(16), nullable=False),
        Column("state", String(16), nullable=False),
        Column("create_time", Float, nullable=False),
        Column("update_time", Float, nullable=False),
        Column("expire_time", Float, nullable=True),
    )


def upgrade(conn: Connection) -> None:
    if conn.dialect.name == "sqlite":
        conn.execute(text("DROP INDEX IF EXISTS ix_files_tenant"))
        conn.execute(text("ALTER TABLE files RENAME TO files_v2"))
        _files_v3(MetaData()).create(conn)
        conn.execute(text(f"INSERT INTO files ({COLUMNS}) SELECT {COLUMNS} FROM files_v2"))
        conn.execute(text("DROP TABLE files_v2"))
    else:
        pk = inspect(conn).get_pk_constraint("files")
        if pk.get("name"):
            conn.execute(text(f'ALTER TABLE files DROP CONSTRAINT "{pk["name"]}"'))
        conn.execute(text("ALTER TABLE files ADD PRIMARY KEY (tenant, id)"))
    conn.execute(
        text(
            "DELETE FROM uploads WHERE EXISTS (SELECT 1 FROM uploads AS older "
            "WHERE older.tenant = uploads.tenant AND older.file_id = uploads.file_id "
            "AND older.id < uploads.id)"
        )
    )
    conn.execute(
        text(
            "CREATE UNIQUE INDEX IF NOT EXISTS ux_uploads_tenant_file ON uploads (tenant, file_id)"
        )
    )
