"""The ASGI app: Gemini's batch, files and models API over the services.

Routes are thin: parse, call a service, serialize. Every path is served under
``/v1``, ``/v1beta`` and ``/v1alpha`` (the SDK 3.x uses v1, older SDKs and the docs
v1beta), plus the upload (``/upload/{v}/files``) and download
(``/download/{v}/files/{id}:download``) paths.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from overnight import __version__
from overnight.api.errors import install_error_handlers
from overnight.api.gemini import batches, files, models, upload, webhooks
from overnight.api.guard import Guard
from overnight.api.limits import BodyLimit
from overnight.api.openapi import install_openapi
from overnight.services.container import ServiceSet


def create_app(services: ServiceSet, *, bind_host: str | None = None) -> FastAPI:
    """Build the app over already-built services (``app.build_runtime(...).services``).

    ``bind_host`` is the address ``overnight serve`` listens on (default
    ``server.host``); it is one of the Host names the app answers to (``guard.py``).
    """
    app = FastAPI(
        title="Overnight",
        version=__version__,
        description="A self-hosted Batch Mode for language models, speaking the Gemini API.",
    )
    app.state.services = services
    install_error_handlers(app)
    for module in (upload, files, batches, models, webhooks):
        app.include_router(module.router)
    install_openapi(app)
    # The last added runs first: refuse foreign requests before reading any body.
    app.add_middleware(BodyLimit, settings=services.settings.server)
    app.add_middleware(Guard, settings=services.settings.server, bind_host=bind_host)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> JSONResponse:
        """200 ``ok`` while work moves (or there is none); 503 ``degraded`` with the
        reason while the workers cannot make progress (``engine/health.py``)."""
        report = getattr(app.state, "health", None)  # set by `serve` with workers
        body = {"status": "ok", **(report() if report is not None else {}), "version": __version__}
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    return app
