"""``ServiceSet``: the use-cases the API and the CLI call, built once per process.

It holds services only (and the settings and model catalog they answer with), never
the store, the blobs or the backends: the web layer reaches data through a service
method. ``app.build_runtime`` builds it.
"""

from __future__ import annotations

from dataclasses import dataclass

from overnight.catalog import ModelCatalog
from overnight.config import Settings
from overnight.services.batches import BatchService
from overnight.services.files import FileService
from overnight.services.generation import GenerationService
from overnight.services.keys import KeyService
from overnight.services.runs import RunService
from overnight.services.uploads import UploadService
from overnight.services.webhooks import WebhookService


@dataclass(frozen=True)
class ServiceSet:
    """The use-cases of one process. ``uploads`` is the process's one
    ``UploadService`` (it serializes each session's chunks)."""

    settings: Settings
    catalog: ModelCatalog
    files: FileService
    uploads: UploadService
    batches: BatchService
    generation: GenerationService
    runs: RunService
    keys: KeyService
    webhooks: WebhookService
