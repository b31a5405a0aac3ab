"""One error tree for the whole package.

Foreign exceptions (SQL drivers, torch, OS errors) are converted at the boundary
into these. Each carries a Google-style status so that the API layer can render
it as ``{"error": {code, message, status}}`` from one table, and the CLI can
print it as one line that names the fix.
"""

from __future__ import annotations

from typing import ClassVar


class OvernightError(Exception):
    """Base of every error Overnight raises on purpose."""

    status: ClassVar[str] = "INTERNAL"
    http_code: ClassVar[int] = 500
    grpc_code: ClassVar[int] = 13

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_status(self) -> dict[str, object]:
        """The google.rpc.Status shape used in result lines (gRPC code)."""
        return {"code": self.grpc_code, "message": self.message, "status": self.status}


class InvalidArgument(OvernightError):
    status = "INVALID_ARGUMENT"
    http_code = 400
    grpc_code = 3


class FailedPrecondition(OvernightError):
    status = "FAILED_PRECONDITION"
    http_code = 400
    grpc_code = 9


class NotFound(OvernightError):
    status = "NOT_FOUND"
    http_code = 404
    grpc_code = 5


class Unauthenticated(OvernightError):
    """A key is required and was missing or wrong."""

    status = "UNAUTHENTICATED"
    http_code = 401
    grpc_code = 16


class PermissionDenied(OvernightError):
    status = "PERMISSION_DENIED"
    http_code = 403
    grpc_code = 7


class AlreadyExists(OvernightError):
    status = "ALREADY_EXISTS"
    http_code = 409
    grpc_code = 6


class ConfigError(OvernightError):
    """The settings (file, environment or flags) are wrong. Raised at start-up."""

    status = "FAILED_PRECONDITION"
    http_code = 400
    grpc_code = 9


class StoreError(OvernightError):
    """The metadata store failed (driver error, unreachable database)."""

    status = "UNAVAILABLE"
    http_code = 503
    grpc_code = 14


class BlobError(OvernightError):
    """The blob store failed (missing blob, I/O error)."""

    status = "INTERNAL"
    http_code = 500
    grpc_code = 13


class BlobNotFound(BlobError):
    """A blob that should exist does not (deleted behind Overnight's back, or never
    written). It concerns the one batch or file that names it, not the service."""


class StorageFull(OvernightError):
    """The disk (or object store quota) under the blobs or the database is full.

    Infrastructure, not the caller's fault: the request may be retried once space is
    freed, and deleting files frees it.
    """

    status = "RESOURCE_EXHAUSTED"
    http_code = 507
    grpc_code = 8


# ---- backend errors: the engine decides what to do from the type alone ----


class BackendError(OvernightError):
    """Base of errors raised by model backends."""


class RequestRejected(BackendError):
    """This one request cannot be served; it becomes that request's error line.

    ``status``/``grpc_code`` default to INVALID_ARGUMENT but can be overridden per
    instance (an upstream may answer, say, RESOURCE_EXHAUSTED after retries).
    """

    status = "INVALID_ARGUMENT"
    http_code = 400
    grpc_code = 3

    def __init__(self, message: str, *, status: str | None = None, grpc_code: int | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status  # type: ignore[misc]
        if grpc_code is not None:
            self.grpc_code = grpc_code  # type: ignore[misc]


class RetryableError(BackendError):
    """A transient failure (rate limit, 5xx, timeout): the work may be retried later."""

    status = "UNAVAILABLE"
    http_code = 503
    grpc_code = 14


class BackendUnavailable(BackendError):
    """The backend cannot run at all (missing package, model file, device)."""

    status = "UNAVAILABLE"
    http_code = 503
    grpc_code = 14
