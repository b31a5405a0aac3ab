"""``overnight webhooks …``: register and manage webhooks on a running server, over HTTP.

The same calls as the SDK's ``client.webhooks.*`` (``/v1beta/webhooks``), through the
client commands' ``OvernightClient``. ``create`` and ``rotate-secret`` print the
signing secret: the only time the server shows it.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from overnight.cli.remote import DEFAULT_SERVER, ApiKey, ServerUrl, call_server

app = typer.Typer(
    help="Webhooks: POST a signed event (Standard Webhooks) when a batch ends. "
    "See docs/webhooks.md.",
    no_args_is_help=True,
)
console = Console(stderr=True)
out = Console()

EVENTS_HELP = (
    "An event to subscribe to (repeat for more): batch.succeeded, batch.failed, "
    "batch.expired, batch.cancelled."
)


def _path(webhook_id: str) -> str:
    return f"webhooks/{webhook_id.removeprefix('webhooks/')}"


def describe(webhook: dict[str, Any]) -> Table:
    """One webhook as a two-column table."""
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    secrets = ", ".join(
        s.get("truncated_secret", "")
        + (f" (until {s['expire_time']})" if s.get("expire_time") else "")
        for s in webhook.get("signing_secrets") or []
    )
    rows = [
        ("id", webhook.get("id", "")),
        ("name", webhook.get("name", "")),
        ("uri", webhook.get("uri", "")),
        ("events", ", ".join(webhook.get("subscribed_events") or [])),
        ("state", webhook.get("state", "")),
        ("secrets", secrets),
        ("created", webhook.get("create_time", "")),
        ("updated", webhook.get("update_time", "")),
    ]
    for key, value in rows:
        if value:
            table.add_row(key, escape(str(value)))
    return table


@app.command("create")
def create(
    uri: Annotated[str, typer.Argument(help="The http(s) URL events are POSTed to.")],
    event: Annotated[list[str], typer.Option("--event", "-e", help=EVENTS_HELP)],
    name: Annotated[str | None, typer.Option(help="A name of your own for it.")] = None,
    server: ServerUrl = DEFAULT_SERVER,
    api_key: ApiKey = None,
) -> None:
    """Register a webhook; prints its id and its signing secret (shown only now)."""
    body: dict[str, Any] = {"uri": uri, "subscribed_events": event}
    if name:
        body["name"] = name
    webhook = call_server(server, api_key, lambda c: c._json("POST", "webhooks", body))
    console.print(describe(webhook))
    console.print("Signing secret (shown only now; verify deliveries with it):", highlight=False)
    print(webhook.get("new_signing_secret", ""))


@app.command("ls")
def list_webhooks(
    page_size: Annotated[int | None, typer.Option(help="Webhooks per page.")] = None,
    page_token: Annotated[str | None, typer.Option(help="next_page_token of a page.")] = None,
    server: ServerUrl = DEFAULT_SERVER,
    api_key: ApiKey = None,
) -> None:
    """Your webhooks, newest first."""
    listing = call_server(
        server,
        api_key,
        lambda c: c._json("GET", "webhooks", page_size=page_size, page_token=page_token),
    )
    table = Table(title="Webhooks")
    for column in ("id", "name", "state", "events", "uri"):
        table.add_column(column, no_wrap=column in ("id", "state"))
    for hook in listing.get("webhooks") or []:
        table.add_row(
            hook.get("id", ""),
            escape(hook.get("name", "")),
            hook.get("state", ""),
            ", ".join(hook.get("subscribed_events") or []),
            escape(hook.get("uri", "")),
        )
    out.print(table)
    if listing.get("next_page_token"):
        console.print(f"more: --page-token {listing['next_page_token']}", highlight=False)


@app.command("get")
def get(
    webhook_id: Annotated[str, typer.Argument(help="The webhook's id.")],
    server: ServerUrl = DEFAULT_SERVER,
    api_key: ApiKey = None,
) -> None:
    """One webhook: uri, events, state and its secrets (truncated)."""
    out.print(describe(call_server(server, api_key, lambda c: c._json("GET", _path(webhook_id)))))


@app.command("update")
def update(
    webhook_id: Annotated[str, typer.Argument(help="The webhook's id.")],
    uri: Annotated[str | None, typer.Option(help="A new URL.")] = None,
    event: Annotated[
        list[str] | None, typer.Option("--event", "-e", help="Replace the events: " + EVENTS_HELP)
    ] = None,
    name: Annotated[str | None, typer.Option(help="A new name.")] = None,
    enable: Annotated[
        bool | None,
        typer.Option(
            "--enable/--disable",
            help="Turn deliveries on (also after it was disabled for failing) or off.",
            show_default=False,
        ),
    ] = None,
    server: ServerUrl = DEFAULT_SERVER,
    api_key: ApiKey = None,
) -> None:
    """Change a webhook's URL, events, name, or turn it on or off."""
    body: dict[str, Any] = {}
    if uri is not None:
        body["uri"] = uri
    if event:
        body["subscribed_events"] = event
    if name is not None:
        body["name"] = name
    if enable is not None:
        body["state"] = "enabled" if enable else "disabled"
    if not body:
        console.print(
            "[bold red]error:[/] nothing to change; give --uri, --event, --name, "
            "--enable or --disable",
            highlight=False,
        )
        raise typer.Exit(2)
    mask = ",".join(body)
    webhook = call_server(
        server, api_key, lambda c: c._json("PATCH", _path(webhook_id), body, update_mask=mask)
    )
    out.print(describe(webhook))


@app.command("rm")
def remove(
    webhook_id: Annotated[str, typer.Argument(help="The webhook's id.")],
    server: ServerUrl = DEFAULT_SERVER,
    api_key: ApiKey = None,
) -> None:
    """Delete a webhook; events not yet delivered to it are dropped."""
    call_server(server, api_key, lambda c: c._json("DELETE", _path(webhook_id)))
    console.print(f"deleted webhook {webhook_id.removeprefix('webhooks/')}", highlight=False)


@app.command("ping")
def ping(
    webhook_id: Annotated[str, typer.Argument(help="The webhook's id.")],
    server: ServerUrl = DEFAULT_SERVER,
    api_key: ApiKey = None,
) -> None:
    """Send it a signed webhook.ping event (delivered and retried like any event)."""
    call_server(server, api_key, lambda c: c._json("POST", f"{_path(webhook_id)}:ping"))
    console.print("ping queued", highlight=False)


@app.command("rotate-secret")
def rotate_secret(
    webhook_id: Annotated[str, typer.Argument(help="The webhook's id.")],
    revoke_now: Annotated[
        bool,
        typer.Option(help="Stop signing with the old secrets at once (default: after 24 h)."),
    ] = False,
    server: ServerUrl = DEFAULT_SERVER,
    api_key: ApiKey = None,
) -> None:
    """A new signing secret, printed (shown only now)."""
    behavior = (
        "revoke_previous_secrets_immediately" if revoke_now else "revoke_previous_secrets_after_h24"
    )
    answer = call_server(
        server,
        api_key,
        lambda c: c._json(
            "POST", f"{_path(webhook_id)}:rotateSigningSecret", {"revocation_behavior": behavior}
        ),
    )
    print(answer.get("secret", ""))


@app.command("dynamic-secret")
def dynamic_secret(server: ServerUrl = DEFAULT_SERVER, api_key: ApiKey = None) -> None:
    """The secret that signs deliveries to your batches' own webhookConfig URIs."""
    answer = call_server(server, api_key, lambda c: c._json("GET", "webhooks:dynamicSigningSecret"))
    print(answer.get("secret", ""))
