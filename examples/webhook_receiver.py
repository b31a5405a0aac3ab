"""A webhook receiver that verifies Overnight's (and Gemini's) signed events.

Every delivery carries the Standard Webhooks headers ``webhook-id``,
``webhook-timestamp`` and ``webhook-signature``; ``standardwebhooks.Webhook.verify``
checks the signature over the raw body and refuses a timestamp more than five minutes
off (replays). A delivery can arrive more than once (at-least-once): the ``webhook-id``
is the same each time, so remember the ids you have handled.

    pip install standardwebhooks
    export WEBHOOK_SECRET=whsec_...        # new_signing_secret from client.webhooks.create
    python examples/webhook_receiver.py --port 9000

then register it (on a loopback or private address Overnight needs
``webhooks.allow_private_addresses = true``)::

    overnight webhooks create http://127.0.0.1:9000/ --event batch.succeeded --event batch.failed

Several secrets may be given, comma-separated (``WEBHOOK_SECRET=whsec_a,whsec_b``):
a registered webhook's secret and the one for batches' own ``webhookConfig`` URIs
(``overnight webhooks dynamic-secret``), or the old and new secret during a rotation.

Answer 2xx quickly; slow work belongs in a queue. Any other answer, or none within
``webhooks.timeout_seconds``, makes Overnight try again later.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError

Handle = Callable[[dict[str, Any]], None]


def verify(secrets: list[str], body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    """The event, once one of ``secrets`` verifies it. Raises ``WebhookVerificationError``."""
    for secret in secrets:
        try:
            event: dict[str, Any] = Webhook(secret).verify(body, headers)
            return event
        except WebhookVerificationError:
            continue
    raise WebhookVerificationError("no secret verifies this delivery")


def print_event(event: dict[str, Any]) -> None:
    data = event.get("data", {})
    line = f"{event.get('type')}: {data.get('id')} {data.get('state', '')}"
    if data.get("file_name"):
        line += f" results in {data['file_name']}"
    if data.get("error_message"):
        line += f" ({data['error_message']})"
    if data.get("user_metadata") is not None:
        line += f" metadata={json.dumps(data['user_metadata'])}"
    print(line, flush=True)


def make_server(
    host: str, port: int, secrets: list[str], handle: Handle = print_event
) -> ThreadingHTTPServer:
    """An HTTP server that answers 204 to verified deliveries (handled once per
    ``webhook-id``) and 400 to anything else."""
    seen: set[str] = set()

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                event = verify(secrets, body, headers)
            except WebhookVerificationError as exc:
                self._answer(400, f"not verified: {exc}")
                return
            if headers["webhook-id"] not in seen:  # a repeat of a handled delivery: skip
                seen.add(headers["webhook-id"])
                handle(event)
            self._answer(204)

        def _answer(self, status: int, text: str = "") -> None:
            data = text.encode()
            self.send_response(status)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    return ThreadingHTTPServer((host, port), Receiver)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument(
        "--secret",
        default=os.environ.get("WEBHOOK_SECRET", ""),
        help="whsec_... (comma-separated for several); default $WEBHOOK_SECRET",
    )
    args = parser.parse_args()
    secrets = [s.strip() for s in args.secret.split(",") if s.strip()]
    if not secrets:
        sys.exit("give the signing secret with --secret or WEBHOOK_SECRET")
    server = make_server(args.host, args.port, secrets)
    print(f"receiving webhooks on http://{args.host}:{server.server_port}/", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
