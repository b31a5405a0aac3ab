"""The metadata store on SQLAlchemy 2 Core, for SQLite and PostgreSQL.

``SqlStore`` opens one ``Database`` and hands each client the part it uses: the
services get ``files``, ``uploads``, ``batches``, ``keys`` and ``webhooks``, the engine
gets ``queue``, the webhook dispatcher ``outbox``. Each part implements one protocol of
``store/base.py``.
"""

from __future__ import annotations

from pathlib import Path

from overnight.store.base import (
    BatchStore,
    FileStore,
    KeyStore,
    UploadStore,
    WebhookOutbox,
    WebhookStore,
    WorkQueue,
)
from overnight.store.batches import SqlBatchStore
from overnight.store.db import Database
from overnight.store.files import SqlFileStore
from overnight.store.keys import SqlKeyStore
from overnight.store.outbox import SqlWebhookOutbox
from overnight.store.queue import SqlWorkQueue
from overnight.store.uploads import SqlUploadStore
from overnight.store.webhooks import SqlWebhookStore


class SqlStore:
    """Files, uploads, batches, keys, the work queue and webhooks over one database.

    Build with ``await SqlStore.open(url)``; ``close`` when done.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self.files: FileStore = SqlFileStore(db)
        self.uploads: UploadStore = SqlUploadStore(db)
        self.batches: BatchStore = SqlBatchStore(db)
        self.keys: KeyStore = SqlKeyStore(db)
        self.queue: WorkQueue = SqlWorkQueue(db)
        self.webhooks: WebhookStore = SqlWebhookStore(db)
        self.outbox: WebhookOutbox = SqlWebhookOutbox(db)

    @classmethod
    async def open(cls, url: str) -> SqlStore:
        """Connect and apply pending migrations. Raises ``StoreError`` naming the URL."""
        return cls(await Database.open(url))

    async def close(self) -> None:
        await self.db.close()

    @property
    def sqlite_dir(self) -> Path | None:
        """The directory of the SQLite database file (None: not SQLite, or in memory)."""
        return self.db.sqlite_dir

    async def schema_version(self) -> int:
        """The newest migration applied."""
        return await self.db.schema_version()
