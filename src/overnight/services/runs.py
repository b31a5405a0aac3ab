"""Resumable local runs (``overnight run``): one batch per input file, model and kind.

The input is imported into the blob store once and a batch created with a ``ref``
derived from the input's path, the model and the kind, and annotated with the input's
size and mtime. Asking again for the same run finds that batch and continues it, as
long as the input is unchanged and the batch did not end without finishing; otherwise
it is refused, unless ``restart`` asks to drop the old batch and begin again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from overnight.catalog import ModelCatalog
from overnight.domain.batches import Batch, BatchKind, BatchState
from overnight.errors import FailedPrecondition
from overnight.services.batches import BatchService
from overnight.services.files import FileService

TENANT = "local"
# a batch in one of these ended without finishing: resuming it would finish nothing
_ENDED_SHORT = (BatchState.CANCELLED, BatchState.EXPIRED, BatchState.FAILED)


@dataclass(frozen=True, slots=True)
class RunStart:
    """The batch a run works on; ``resumed`` when it was found rather than created."""

    batch: Batch
    resumed: bool


class RunService:
    def __init__(self, catalog: ModelCatalog, files: FileService, batches: BatchService) -> None:
        self.catalog = catalog
        self.files = files
        self.batches = batches

    async def resume_or_create(
        self, input: Path, *, model: str | None, kind: BatchKind | None, restart: bool
    ) -> RunStart:
        """The batch of the run of ``input`` (with ``model``, or the kind's default):
        the interrupted one, or a new one.

        Raises ``FailedPrecondition`` when ``input`` is not a file, or when the input
        changed since the interrupted run started or that run's batch ended CANCELLED,
        EXPIRED or FAILED (``restart`` deletes that batch and starts over instead);
        ``NotFound``/``InvalidArgument`` for a model that cannot serve the kind.
        """
        if model is None:
            kind = kind or BatchKind.GENERATE
            entry = self.catalog.default_for(kind)
        else:
            kind = kind or self.catalog.resolve(model).default_kind
            entry = self.catalog.resolve_for(model, kind)
        path = input.resolve()
        if not path.is_file():
            raise FailedPrecondition(f"input {input} does not exist or is not a file")
        ref = run_ref(path, entry.name, kind)
        stamp = _stamp(path)
        found = await self.batches.find_by_ref(ref)
        if found is not None:
            batch, annotations = found
            changed = annotations.get("input") != stamp
            stale = batch.state in _ENDED_SHORT
            if not (restart or changed or stale):
                return RunStart(batch, resumed=True)
            if not restart:
                why = (
                    "changed since the interrupted run started"
                    if changed
                    else f"was last run as batch {batch.id}, which ended {batch.state.value}"
                )
                raise FailedPrecondition(
                    f"{input} {why} ({batch.done_count} of {batch.request_count} requests done). "
                    "Re-run with --restart to start over."
                )
            await self.batches.delete(None, batch.id)
        file = await self.files.import_path(TENANT, path)
        batch = await self.batches.create_from_file(
            TENANT,
            model=entry.name,
            kind=kind,
            file_id=file.id,
            display_name=f"overnight run {path.name}",
            ref=ref,
            annotations={"input": stamp, "path": str(path)},
        )
        return RunStart(batch, resumed=False)


def run_ref(path: Path, model: str, kind: BatchKind) -> str:
    """The ``ref`` of the run of ``path`` (resolved) with ``model`` and ``kind``."""
    digest = hashlib.sha256(f"{path}\0{model}\0{kind.value}".encode()).hexdigest()
    return f"run:{digest[:40]}"


def _stamp(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
