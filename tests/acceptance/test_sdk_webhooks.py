"""Webhooks with the real ``google-genai`` SDK against a real ``overnight serve``.

``client.webhooks.create/list/get/update/delete`` as the SDK calls them, and batches
created with ``config={"webhook_config": ...}``. The receiver is down when the batches
finish; ``serve`` is then SIGKILLed, the receiver started, ``serve`` started again on
the same data directory, and every event still arrives, verified with the Standard
Webhooks library.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from google import genai
from google.genai import types
from tests.integration.test_webhooks import Receiver
from tests.serving import FAKE_MODELS, free_port

CONFIG = (
    FAKE_MODELS
    + '[aliases]\n"gemini-*" = "echo"\n'
    + "[webhooks]\nallow_private_addresses = true\nretry_initial_seconds = 0.2\n"
    + "retry_max_seconds = 0.5\npoll_seconds = 0.05\ntimeout_seconds = 2.0\n"
)
DONE = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}


@contextlib.contextmanager
def serve(workdir: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """``overnight serve`` on ``port`` over ``workdir/data``; SIGINT at the end unless
    the test killed it."""
    (workdir / "overnight.toml").write_text(CONFIG)
    with (workdir / "serve.log").open("a") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "overnight.cli.main",
                "serve",
                "--port",
                str(port),
                "-d",
                "data",
            ],
            cwd=workdir,
            env={**os.environ, "OVERNIGHT_ENGINE__POLL_SECONDS": "0.05"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                break
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"serve did not start:\n{(workdir / 'serve.log').read_text()}")
        time.sleep(0.1)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise AssertionError("serve did not stop within 30 s of SIGINT") from None


def sdk(port: int, version: str | None = None) -> genai.Client:
    options: dict[str, Any] = {"base_url": f"http://127.0.0.1:{port}"}
    if version:
        options["api_version"] = version
    return genai.Client(api_key="any", http_options=options)


def wait_done(client: genai.Client, name: str) -> types.BatchJob:
    deadline = time.monotonic() + 60
    while True:
        job = client.batches.get(name=name)
        if job.state is not None and job.state.name in DONE:
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def attempts(workdir: Path) -> list[tuple[str, int, str]]:
    """(state, attempts, last_error) of each outbox row, read from the SQLite file."""
    with contextlib.closing(sqlite3.connect(workdir / "data" / "overnight.db")) as db:
        rows = db.execute("SELECT state, attempts, last_error FROM webhook_outbox").fetchall()
    return [(str(r[0]), int(r[1]), str(r[2])) for r in rows]


@pytest.mark.parametrize("version", [None, "v1beta"])
def test_sdk_manages_webhooks(tmp_path: Path, version: str | None) -> None:
    port = free_port()
    with serve(tmp_path, port):
        client = sdk(port, version)
        created = client.webhooks.create(
            name="nightly",
            subscribed_events=["batch.succeeded", "batch.failed", "batch.cancelled"],
            uri="https://hooks.example.com/overnight",
        )
        assert created.id and created.name == "nightly"
        assert created.state == "enabled"
        assert created.new_signing_secret and created.new_signing_secret.startswith("whsec_")
        assert created.subscribed_events == ["batch.succeeded", "batch.failed", "batch.cancelled"]
        assert created.create_time is not None and created.signing_secrets
        got = client.webhooks.get(created.id)
        assert got.new_signing_secret is None and got.uri == created.uri

        other = client.webhooks.create(subscribed_events=["batch.expired"], uri="https://e.com/2")
        page = client.webhooks.list(page_size=1)
        assert [w.id for w in page.webhooks or []] == [other.id] and page.next_page_token
        rest = client.webhooks.list(page_size=1, page_token=page.next_page_token)
        assert [w.id for w in rest.webhooks or []] == [created.id]

        updated = client.webhooks.update(created.id, state="disabled", update_mask="state")
        assert updated.state == "disabled" and updated.name == "nightly"
        updated = client.webhooks.update(created.id, uri="https://hooks.example.com/v2")
        assert updated.uri == "https://hooks.example.com/v2" and updated.state == "disabled"
        secret = client.webhooks.rotate_signing_secret(created.id).secret
        assert secret and secret.startswith("whsec_")

        client.webhooks.delete(created.id)
        assert [w.id for w in client.webhooks.list().webhooks or []] == [other.id]
        with pytest.raises(Exception, match="404"):
            client.webhooks.get(created.id)


def test_events_survive_a_sigkill_between_finish_and_delivery(tmp_path: Path) -> None:
    port, receiver_port = free_port(), free_port()
    hook_url = f"http://127.0.0.1:{receiver_port}/registered"
    own_url = f"http://127.0.0.1:{receiver_port}/own"
    with serve(tmp_path, port) as proc:
        client = sdk(port)
        hook = client.webhooks.create(subscribed_events=["batch.succeeded"], uri=hook_url)
        registered_secret = hook.new_signing_secret
        src = [{"contents": [{"parts": [{"text": "hello"}], "role": "user"}]}]
        plain = client.batches.create(model="gemini-2.5-flash", src=src)
        own = client.batches.create(
            model="gemini-2.5-flash",
            src=src,
            config={"webhook_config": {"uris": [own_url], "user_metadata": {"run": 42}}},
        )
        assert plain.name and own.name
        for name in (plain.name, own.name):
            assert wait_done(client, name).state.name == "JOB_STATE_SUCCEEDED"  # type: ignore[union-attr]
        # The receiver is down: both events are tried, fail, and wait in the outbox.
        deadline = time.monotonic() + 30
        while not (rows := attempts(tmp_path)) or any(n < 1 for _, n, _ in rows):
            assert time.monotonic() < deadline, rows
            time.sleep(0.05)
        assert len(rows) == 2 and all(state == "PENDING" for state, _, _ in rows), rows
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    assert all(state == "PENDING" for state, _, _ in attempts(tmp_path))

    rx = Receiver(port=receiver_port)
    serving_rx = rx.serve()
    next(serving_rx)
    try:
        with serve(tmp_path, port):
            dynamic_secret = httpx.get(
                f"http://127.0.0.1:{port}/v1beta/webhooks:dynamicSigningSecret"
            ).json()["secret"]
            deadline = time.monotonic() + 30
            while len(rx.received) < 2:
                assert time.monotonic() < deadline, (rx.received, attempts(tmp_path))
                time.sleep(0.05)
            paths = {item.path: item for item in rx.received}
            assert sorted(paths) == ["/own", "/registered"]
            registered = paths["/registered"].verified(registered_secret or "")
            mine = paths["/own"].verified(dynamic_secret)
            assert registered["type"] == "batch.succeeded"
            assert registered["data"]["id"] == plain.name
            assert "user_metadata" not in registered["data"]
            assert mine["type"] == "batch.succeeded"
            assert mine["data"]["id"] == own.name
            assert mine["data"]["user_metadata"] == {"run": 42}
            deadline = time.monotonic() + 10
            while {state for state, _, _ in attempts(tmp_path)} != {"DELIVERED"}:
                assert time.monotonic() < deadline, attempts(tmp_path)
                time.sleep(0.05)
            time.sleep(0.5)
            assert len(rx.received) == 2  # delivered: not sent again
    finally:
        with contextlib.suppress(StopIteration):
            next(serving_rx)


def test_the_webhooks_commands(tmp_path: Path) -> None:
    from tests.acceptance.test_cli_client import overnight

    port = free_port()
    server = f"http://127.0.0.1:{port}"
    with serve(tmp_path, port):

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            done = overnight("webhooks", *args, "--server", server, cwd=tmp_path)
            assert done.returncode == 0, done.stderr
            return done

        created = cli(
            "create", "https://hooks.example.com/in", "-e", "batch.succeeded",
            "-e", "batch.cancelled", "--name", "cli hook",
        )  # fmt: skip
        secret = created.stdout.strip()
        assert secret.startswith("whsec_") and "\n" not in secret  # stdout: the secret alone
        hook_id = next(
            line.split()[-1] for line in created.stderr.splitlines() if line.split()[:1] == ["id"]
        )
        listed = cli("ls")
        assert hook_id in listed.stdout and "enabled" in listed.stdout
        assert "batch.cancelled" in cli("get", hook_id).stdout
        updated = cli("update", hook_id, "--disable", "--uri", "https://hooks.example.com/v2")
        assert "disabled" in updated.stdout and "/v2" in updated.stdout
        assert cli("rotate-secret", hook_id, "--revoke-now").stdout.startswith("whsec_")
        assert cli("dynamic-secret").stdout.startswith("whsec_")
        cli("rm", hook_id)
        gone = overnight("webhooks", "get", hook_id, "--server", server, cwd=tmp_path)
        assert gone.returncode == 1 and "does not exist" in gone.stderr
        refused = overnight(
            "webhooks", "create", "https://e.com/x", "-e", "batch.completed",
            "--server", server, cwd=tmp_path,
        )  # fmt: skip
        assert refused.returncode == 1 and "unknown event 'batch.completed'" in refused.stderr
