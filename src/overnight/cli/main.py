"""``overnight``: the command line entry point."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from overnight import __version__
from overnight.cli.remote import DEFAULT_SERVER, ApiKey, ServerUrl, call_server
from overnight.cli.webhooks import app as webhooks_app
from overnight.config import Settings, load_settings
from overnight.domain.batches import BatchKind
from overnight.errors import ConfigError, OvernightError

app = typer.Typer(
    name="overnight",
    help="Overnight: a self-hosted Batch Mode for language models (Gemini batch API compatible).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        "-d",
        help="Data directory (database, blobs, model cache). "
        "Default: $OVERNIGHT_DATA_DIR or ~/.local/share/overnight.",
    ),
]
ConfigFile = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Settings file (TOML). Default: $OVERNIGHT_CONFIG or ./overnight.toml.",
    ),
]


def _settings(config: Path | None, data_dir: Path | None) -> Settings:
    overrides: dict[str, Any] = {}
    if data_dir is not None:
        overrides["data_dir"] = str(data_dir)
    settings = load_settings(config, overrides=overrides)
    logging.getLogger("overnight").setLevel(settings.log_level)
    return settings


def _fail(exc: OvernightError, code: int = 2) -> typer.Exit:
    # escape: messages quote things like pip install -e '.[vllm]', which is markup to rich
    console.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False)
    return typer.Exit(code)


@app.command()
def run(
    input: Annotated[Path, typer.Argument(help='JSONL file: one {"key", "request"} per line.')],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Where to write the results JSONL.")
    ],
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="Model name or alias (see `overnight models`). "
            "Default: smollm2-135m-instruct, or all-minilm-l6-v2 with --kind embed.",
        ),
    ] = None,
    kind: Annotated[
        BatchKind | None,
        typer.Option("--kind", "-k", help="generate or embed. Default: inferred from the model."),
    ] = None,
    restart: Annotated[
        bool, typer.Option("--restart", help="Discard an earlier run of this input and start over.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Process a JSONL batch locally and write keyed results to OUTPUT.

    Resumable: after Ctrl-C or a crash, run the same command again and it continues
    where it stopped, without redoing finished shards.
    """
    from overnight.app import build_runtime
    from overnight.cli.run import RunRequest, print_summary, run_file

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    request = RunRequest(input, output, model, kind, restart, show_progress=not quiet)

    async def main() -> None:
        runtime = await build_runtime(_settings(config, data_dir))
        try:
            summary = await run_file(runtime, request, console)
        finally:
            await runtime.close()
        print_summary(console, summary)

    try:
        asyncio.run(main())
    except ConfigError as exc:
        raise _fail(exc, 2) from None
    except OvernightError as exc:
        raise _fail(exc, 1) from None
    except KeyboardInterrupt:
        console.print(
            "[yellow]Interrupted.[/] Finished shards are saved; run the same command again to resume."
        )
        raise typer.Exit(130) from None


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[
        int | None, typer.Option(help="Port (default 8080; 0 picks a free one).")
    ] = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Serve the Gemini batch API, with embedded workers, on SQLite and local files by default.

    Point the google-genai SDK at it with
    http_options={"base_url": "http://127.0.0.1:8080"}.
    """
    from overnight.app import build_runtime
    from overnight.cli.serve import serve as serve_api

    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    async def main() -> None:
        settings = _settings(config, data_dir)
        runtime = await build_runtime(settings)
        try:
            await serve_api(
                runtime,
                host or settings.server.host,
                settings.server.port if port is None else port,
                console,
            )
        finally:
            await runtime.close()

    _run_async(main)


@app.command()
def worker(
    data_dir: DataDir = None,
    config: ConfigFile = None,
    health_port: Annotated[
        int | None,
        typer.Option(
            help="Serve GET /healthz on this port (200 ok, 503 degraded) for "
            "Kubernetes probes. Default: off."
        ),
    ] = None,
    health_host: Annotated[
        str, typer.Option(help="Address for --health-port (it answers only /healthz).")
    ] = "0.0.0.0",
) -> None:
    """Run workers only, against the configured store (scale out next to `serve`).

    A database or disk outage while running is waited out, not fatal: the worker
    exits non-zero only if it cannot start (bad settings, no database at start-up).
    """
    from overnight.app import build_runtime
    from overnight.cli.serve import work

    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    async def main() -> None:
        runtime = await build_runtime(_settings(config, data_dir))
        try:
            await work(runtime, console, health_host=health_host, health_port=health_port)
        finally:
            await runtime.close()

    _run_async(main)


keys_app = typer.Typer(help="API keys: with any key configured, every request needs one.")
app.add_typer(keys_app, name="keys")
app.add_typer(webhooks_app, name="webhooks")


@keys_app.command("create")
def keys_create(
    name: Annotated[
        str, typer.Argument(help="Tenant name: the key's files and batches belong to it.")
    ],
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Create an API key for tenant NAME and print it (as the last word). Only its hash is stored."""
    from overnight.app import open_keys

    async def main() -> str:
        async with open_keys(_settings(config, data_dir)) as keys:
            return await keys.create(name)

    key = _run_async(main)
    print(f"Created an API key for tenant {name} (it is shown once; store it safely): {key}")


def _run_async(main: Any) -> Any:
    try:
        return asyncio.run(main())
    except ConfigError as exc:
        raise _fail(exc, 2) from None
    except OvernightError as exc:
        raise _fail(exc, 1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@app.command()
def models(data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """List the configured models and the aliases that map names onto them."""
    from overnight.catalog import ModelCatalog

    try:
        catalog = ModelCatalog(_settings(config, data_dir))
    except OvernightError as exc:
        raise _fail(exc) from None
    out = Console()
    table = Table(title="Models")
    for col in ("name", "backend", "batch kinds", "description"):
        table.add_column(col)
    for name, entry in sorted(catalog.models.items()):
        kinds = ", ".join(sorted(k.value for k in catalog.resolve(name).kinds))
        table.add_row(name, entry.backend, kinds, entry.description)
    out.print(table)
    aliases = Table(title="Aliases (most specific pattern wins)")
    aliases.add_column("pattern")
    aliases.add_column("model")
    for pattern, target in sorted(catalog.aliases.items()):
        aliases.add_row(pattern, target)
    out.print(aliases)


@app.command()
def show(
    results: Annotated[Path, typer.Argument(help="A results JSONL file (from `overnight run`).")],
    width: Annotated[int, typer.Option(help="Characters of text shown per result.")] = 400,
) -> None:
    """Print a results file as a table: key, outcome, text (or error) and tokens."""
    from overnight.cli.show import render_results

    if not results.is_file():
        console.print(f"[bold red]error:[/] {results} does not exist")
        raise typer.Exit(2)
    Console().print(render_results(results, width=width))


@app.command()
def submit(
    input: Annotated[Path, typer.Argument(help='JSONL file: one {"key", "request"} per line.')],
    model: Annotated[str, typer.Option("--model", "-m", help="Model name or alias.")],
    kind: Annotated[
        BatchKind | None,
        typer.Option("--kind", "-k", help="generate or embed. Default: from the model."),
    ] = None,
    display_name: Annotated[
        str | None, typer.Option("--display-name", help="The batch's display name.")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", "-w", help="Show progress until the batch ends.")
    ] = False,
    server: ServerUrl = DEFAULT_SERVER,
    api_key: ApiKey = None,
) -> None:
    """Upload INPUT to a running server and create a batch on it; prints the batch name."""
    from overnight.cli.client import OvernightClient, state_of, wait_for

    if not input.is_file():
        console.print(f"[bold red]error:[/] {input} does not exist or is not a file")
        raise typer.Exit(2)

    def use(client: OvernightClient) -> str:
        batch_kind = kind or client.model_kind(model)
        file = client.upload(input, display_name)
        operation = client.create_batch(model, batch_kind, file["name"], display_name)
        print(operation["name"], flush=True)
        if not wait:
            return "SUCCEEDED"
        return state_of(wait_for(client, operation["name"], console))

    state = call_server(server, api_key, use)
    if state != "SUCCEEDED":
        console.print(f"[bold red]Batch ended {state}.[/] See `overnight status`.")
        raise typer.Exit(1)


@app.command()
def status(
    batch: Annotated[str, typer.Argument(help="Batch name (batches/ID or ID).")],
    server: ServerUrl = DEFAULT_SERVER,
    api_key: ApiKey = None,
) -> None:
    """Show a batch's state, counters and results file."""
    from overnight.cli.client import describe

    operation = call_server(server, api_key, lambda client: client.get_batch(batch))
    Console().print(describe(operation))


@app.command("ls")
def list_batches(
    page_size: Annotated[int, typer.Option("--page-size", help="Batches per page.")] = 50,
    page_token: Annotated[
        str | None, typer.Option("--page-token", help="Page token from an earlier listing.")
    ] = None,
    server: ServerUrl = DEFAULT_SERVER,
    api_key: ApiKey = None,
) -> None:
    """List batches on the server, newest first."""
    from overnight.cli.client import batches_table

    listing = call_server(
        server, api_key, lambda client: client.list_batches(page_size, page_token)
    )
    out = Console()
    if not out.is_terminal:  # piped: keep rows whole for grep and friends
        out = Console(width=160)
    out.print(batches_table(listing))
    if listing.get("nextPageToken"):
        console.print(f"More: --page-token {listing['nextPageToken']}")


@app.command()
def results(
    batch: Annotated[str, typer.Argument(help="Batch name (batches/ID or ID).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the JSONL.")],
    server: ServerUrl = DEFAULT_SERVER,
    api_key: ApiKey = None,
) -> None:
    """Download a finished batch's results (JSONL, one line per key) to OUTPUT."""
    from overnight.cli.client import results_to

    console.print(call_server(server, api_key, lambda client: results_to(client, batch, output)))


@app.command()
def cancel(
    batch: Annotated[str, typer.Argument(help="Batch name (batches/ID or ID).")],
    server: ServerUrl = DEFAULT_SERVER,
    api_key: ApiKey = None,
) -> None:
    """Cancel a pending or running batch (finished requests keep their results)."""
    from overnight.cli.client import OvernightClient, batch_name, state_of

    def use(client: OvernightClient) -> str:
        client.cancel_batch(batch)
        return state_of(client.get_batch(batch))

    state = call_server(server, api_key, use)
    console.print(f"{batch_name(batch)}: cancel requested; state {state}")


@app.command()
def version() -> None:
    """Print the version."""
    print(__version__)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    code: int | str | None
    try:
        app()
        code = 0
    except KeyboardInterrupt:  # Ctrl-C before a command's own handling began
        code = 130
    except SystemExit as exc:  # how typer ends every command
        code = exc.code
    _exit(code)


def _exit(code: int | str | None) -> NoReturn:
    """Exit with ``code``; skip the interpreter's teardown once vLLM has been loaded.

    Every command has closed what it opened by now (the engine is stopped, the store
    closed, the results written). Tearing down torch's and vLLM's modules adds about
    2.5 s to every ``overnight run`` on two cores and does nothing that matters, so
    after flushing the output we leave at once. Without vLLM, the normal exit.
    """
    if "vllm" not in sys.modules:
        sys.exit(code)
    if isinstance(code, str):  # SystemExit("message"): print it, exit 1
        print(code, file=sys.stderr)
        code = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


if __name__ == "__main__":
    main()
