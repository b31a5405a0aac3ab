"""The client commands (``submit``, ``status``, ``ls``, ``results``, ``cancel``) over HTTP.

They speak the same Gemini wire protocol as the google-genai SDK to a running
``overnight serve``: the resumable upload protocol for input files (8 MiB chunks,
streamed from disk), then ``models/M:batchGenerateContent`` or
``:asyncBatchEmbedContent`` with ``inputConfig.fileName``, and ``batches/ID`` to
follow it. Results are streamed to disk, never held in memory.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from overnight.domain.batches import BatchKind
from overnight.errors import FailedPrecondition, OvernightError

DEFAULT_SERVER = "http://127.0.0.1:8080"
API_KEY_ENV = ("OVERNIGHT_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY")
CHUNK_SIZE = 8 * 1024 * 1024
API_VERSION = "v1beta"
TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED"})


class ServerError(OvernightError):
    """The server answered with an error (its own message is kept)."""

    def __init__(self, message: str, code: int, status: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.server_status = status


class Unreachable(OvernightError):
    """No server answered at the URL."""


def default_api_key() -> str | None:
    return next((os.environ[name] for name in API_KEY_ENV if os.environ.get(name)), None)


def batch_name(name: str) -> str:
    """``abc`` or ``batches/abc`` → ``batches/abc``."""
    return name if name.startswith("batches/") else f"batches/{name}"


def state_of(operation: dict[str, Any]) -> str:
    """``BATCH_STATE_RUNNING`` → ``RUNNING``."""
    state = str(operation.get("metadata", {}).get("state", "BATCH_STATE_UNSPECIFIED"))
    return state.removeprefix("BATCH_STATE_").removeprefix("JOB_STATE_")


def stats_of(operation: dict[str, Any]) -> dict[str, int]:
    """batchStats as integers (the wire sends int64 strings and omits zeros)."""
    stats = operation.get("metadata", {}).get("batchStats") or {}
    names = ("requestCount", "successfulRequestCount", "failedRequestCount", "pendingRequestCount")
    return {name: int(stats.get(name, 0) or 0) for name in names}


class OvernightClient:
    """A thin Gemini-protocol client for the CLI. Raises ServerError or Unreachable."""

    def __init__(self, server: str, api_key: str | None, *, timeout: float = 60.0) -> None:
        self.server = server.rstrip("/")
        headers = {"x-goog-api-key": api_key} if api_key else {}
        self._http = httpx.Client(base_url=self.server, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OvernightClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- transport ----------------------------------------------------------------

    def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        _raise_for(response)
        return response

    def _unreachable(self, exc: Exception) -> Unreachable:
        return Unreachable(
            f"cannot reach Overnight at {self.server}; is `overnight serve` running? ({exc})"
        )

    def _json(self, method: str, path: str, body: Any = None, **params: Any) -> dict[str, Any]:
        content = b"" if body is None else orjson.dumps(body)
        response = self._send(
            method,
            f"/{API_VERSION}/{path}",
            content=content,
            params={k: v for k, v in params.items() if v is not None},
            headers={"content-type": "application/json"},
        )
        data = response.json() if response.content else {}
        return data if isinstance(data, dict) else {"value": data}

    # ---- use-cases ----------------------------------------------------------------

    def upload(self, path: Path, display_name: str | None = None) -> dict[str, Any]:
        """Upload ``path`` with the resumable protocol; returns the File."""
        size = path.stat().st_size
        base = {
            "X-Goog-Upload-Protocol": "resumable",
            "X-Goog-Upload-Header-Content-Length": str(size),
            "X-Goog-Upload-Header-Content-Type": "application/jsonl",
            "X-Goog-Upload-File-Name": path.name,
        }
        file: dict[str, Any] = {"displayName": display_name or path.name}
        started = self._send(
            "POST",
            f"/upload/{API_VERSION}/files",
            content=orjson.dumps({"file": file}),
            headers={**base, "X-Goog-Upload-Command": "start", "content-type": "application/json"},
        )
        url = started.headers.get("x-goog-upload-url")
        if not url:
            raise ServerError("the server did not return an upload URL (X-Goog-Upload-URL)", 500)
        offset = 0
        with path.open("rb") as f:
            while True:
                chunk = f.read(CHUNK_SIZE)
                last = offset + len(chunk) >= size
                command = "upload, finalize" if last else "upload"
                response = self._send(
                    "POST",
                    url,
                    content=chunk,
                    headers={
                        **base,
                        "X-Goog-Upload-Command": command,
                        "X-Goog-Upload-Offset": str(offset),
                    },
                )
                offset += len(chunk)
                if last:
                    uploaded: dict[str, Any] = response.json()["file"]
                    return uploaded

    def model_kind(self, model: str) -> BatchKind:
        """What kind of batch ``model`` runs, from its supportedGenerationMethods."""
        info = self._json("GET", f"models/{model.removeprefix('models/')}")
        methods = info.get("supportedGenerationMethods") or []
        return BatchKind.GENERATE if "batchGenerateContent" in methods else BatchKind.EMBED

    def create_batch(
        self, model: str, kind: BatchKind, file_name: str, display_name: str | None
    ) -> dict[str, Any]:
        verb = "batchGenerateContent" if kind is BatchKind.GENERATE else "asyncBatchEmbedContent"
        batch: dict[str, Any] = {"inputConfig": {"fileName": file_name}}
        if display_name:
            batch["displayName"] = display_name
        return self._json(
            "POST", f"models/{model.removeprefix('models/')}:{verb}", {"batch": batch}
        )

    def get_batch(self, name: str) -> dict[str, Any]:
        return self._json("GET", batch_name(name))

    def list_batches(self, page_size: int | None, page_token: str | None) -> dict[str, Any]:
        return self._json("GET", "batches", pageSize=page_size, pageToken=page_token)

    def cancel_batch(self, name: str) -> None:
        self._json("POST", f"{batch_name(name)}:cancel")

    def download(self, file_name: str, target: Path) -> int:
        """Stream a file's bytes to ``target`` (temporary name, then rename). Returns bytes."""
        file_id = file_name.removeprefix("files/")
        tmp = target.with_name(f".{target.name}.part")
        written = 0
        try:
            with self._http.stream(
                "GET", f"/{API_VERSION}/files/{file_id}:download", params={"alt": "media"}
            ) as response:
                if response.status_code != 200:
                    response.read()
                    _raise_for(response)
                with tmp.open("wb") as out:
                    for piece in response.iter_bytes(1024 * 1024):
                        out.write(piece)
                        written += len(piece)
            tmp.replace(target)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        finally:
            tmp.unlink(missing_ok=True)
        return written


def _raise_for(response: httpx.Response) -> None:
    if response.status_code == 200:
        return
    message, status = response.text.strip() or response.reason_phrase, ""
    try:
        error = response.json().get("error", {})
        message = error.get("message") or message
        status = error.get("status") or ""
    except (ValueError, AttributeError):
        pass
    raise ServerError(message, response.status_code, status)


# ---- what the commands print ----------------------------------------------------------


def results_to(client: OvernightClient, name: str, target: Path) -> str:
    """Write a batch's results to ``target``; returns a one-line description."""
    operation = client.get_batch(name)
    output = operation.get("metadata", {}).get("output") or operation.get("response") or {}
    if output.get("responsesFile"):
        size = client.download(output["responsesFile"], target)
        return f"wrote {size} bytes from {output['responsesFile']} to {target}"
    inlined = output.get("inlinedResponses") or output.get("inlinedEmbedContentResponses")
    if inlined is not None:
        items = inlined.get("inlinedResponses", []) if isinstance(inlined, dict) else inlined
        tmp = target.with_name(f".{target.name}.part")
        with tmp.open("wb") as out:
            for item in items:
                out.write(orjson.dumps(item) + b"\n")
        tmp.replace(target)
        return f"wrote {len(items)} inline responses to {target}"
    raise FailedPrecondition(
        f"{batch_name(name)} is {state_of(operation)} and has no results yet; "
        "wait for it with `overnight status` or `overnight submit --wait`"
    )


def describe(operation: dict[str, Any]) -> Table:
    meta = operation.get("metadata", {})
    stats = stats_of(operation)
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    output = meta.get("output") or {}
    rows = [
        ("name", operation.get("name", "")),
        ("state", state_of(operation)),
        ("model", meta.get("model", "")),
        ("display name", meta.get("displayName", "")),
        ("requests", str(stats["requestCount"])),
        ("succeeded", str(stats["successfulRequestCount"])),
        ("failed", str(stats["failedRequestCount"])),
        ("pending", str(stats["pendingRequestCount"])),
        ("created", meta.get("createTime", "")),
        ("updated", meta.get("updateTime", "")),
        ("ended", meta.get("endTime", "")),
        ("results", output.get("responsesFile") or ("inline" if output else "")),
    ]
    error = operation.get("error") or meta.get("error")
    if error:
        rows.append(("error", str(error.get("message", error))))
    for key, value in rows:
        if value:
            table.add_row(key, str(value))
    return table


def batches_table(listing: dict[str, Any]) -> Table:
    table = Table(title="Batches")
    table.add_column("name", no_wrap=True)
    table.add_column("state", no_wrap=True)
    for column in ("model", "display name", "done/total", "created"):
        table.add_column(column)
    for operation in listing.get("operations", []):
        meta = operation.get("metadata", {})
        stats = stats_of(operation)
        done = stats["successfulRequestCount"] + stats["failedRequestCount"]
        table.add_row(
            operation.get("name", ""),
            state_of(operation),
            str(meta.get("model", "")).removeprefix("models/"),
            meta.get("displayName", ""),
            f"{done}/{stats['requestCount']}",
            str(meta.get("createTime", ""))[:19].replace("T", " "),
        )
    return table


@contextmanager
def _bar(console: Console) -> Iterator[Progress]:
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[counts]}"),
        TimeElapsedColumn(),
        console=console,
    )
    with progress:
        yield progress


def wait_for(
    client: OvernightClient, name: str, console: Console, *, poll_s: float = 0.5
) -> dict[str, Any]:
    """Poll until the batch is terminal, showing batchStats as a progress bar."""
    with _bar(console) as progress:
        task = progress.add_task("PENDING", total=None, counts="")
        while True:
            operation = client.get_batch(name)
            state = state_of(operation)
            stats = stats_of(operation)
            done = stats["successfulRequestCount"] + stats["failedRequestCount"]
            total = stats["requestCount"] or None
            progress.update(
                task,
                description=state,
                completed=done,
                total=total,
                counts=f"{stats['failedRequestCount']} failed",
            )
            if state in TERMINAL_STATES:
                return operation
            time.sleep(poll_s)
