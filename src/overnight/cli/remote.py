"""What every client command shares: the server and key options, and one call helper.

Light on purpose: the HTTP client is imported when a command runs, not at start-up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from overnight.errors import OvernightError

if TYPE_CHECKING:
    from overnight.cli.client import OvernightClient

T = TypeVar("T")

DEFAULT_SERVER = "http://127.0.0.1:8080"
ServerUrl = Annotated[
    str,
    typer.Option(
        "--server",
        envvar="OVERNIGHT_SERVER_URL",
        help="Base URL of a running `overnight serve`. Default: $OVERNIGHT_SERVER_URL or "
        "http://127.0.0.1:8080.",
    ),
]
ApiKey = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        help="API key, if the server requires one. Default: $OVERNIGHT_API_KEY, "
        "$GEMINI_API_KEY or $GOOGLE_API_KEY.",
        show_default=False,
    ),
]

_errors = Console(stderr=True)


def call_server(server: str, api_key: str | None, use: Callable[[OvernightClient], T]) -> T:
    """Run ``use(client)``; a server error or an unreachable server exits 1 with its
    message, Ctrl-C exits 130."""
    from overnight.cli.client import OvernightClient, default_api_key

    try:
        with OvernightClient(server, api_key or default_api_key()) as client:
            return use(client)
    except OvernightError as exc:
        # escape: messages quote things like '.[vllm]', which is markup to rich
        _errors.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
