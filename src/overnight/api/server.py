"""The ASGI app: Gemini's batch, files and models API over the services.

Routes are thin: parse, call a service, serialize. Every path is served under
``/v1``, ``/v1beta`` and ``/v1alpha`` (the SDK 3.x uses v1, older SDKs and the docs
v1beta), plus the upload (``/upload/{v}/files``) and download
(``/download/{v}/files/{id}:download``) paths.
"""

from __future__ import annotations

from fastapi import FastAPI

from overnight import __version__
from overnight.api.auth import Authenticator
from overnight.api.errors import install_error_handlers
from overnight.api.gemini import batches, files, models, upload
from overnight.app import Services


def create_app(services: Services) -> FastAPI:
    """Build the app over already-built services (see ``app.build_services``)."""
    app = FastAPI(
        title="Overnight",
        version=__version__,
        description="A self-hosted Batch Mode for language models, speaking the Gemini API.",
    )
    app.state.services = services
    app.state.auth = Authenticator(services.store)
    install_error_handlers(app)
    for module in (upload, files, batches, models):
        app.include_router(module.router)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    return app
