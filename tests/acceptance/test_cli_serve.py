"""``overnight serve`` and ``overnight keys`` as processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
from tests.serving import running_server


def overnight(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "overnight.cli.main", *args],
        cwd=cwd,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_serve_starts_answers_and_stops_cleanly_on_sigint(tmp_path: Path) -> None:
    with running_server(tmp_path) as base:
        assert httpx.get(f"{base}/healthz").json()["status"] == "ok"
        res = httpx.get(f"{base}/v1beta/nowhere")
        assert res.status_code == 404 and res.json()["error"]["status"] == "NOT_FOUND"
    # running_server asserts the process exited within 30 s of SIGINT


def test_keys_create_prints_the_key_last_and_the_server_then_requires_it(tmp_path: Path) -> None:
    res = overnight("keys", "create", "alice", "-d", "data", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    key = res.stdout.split()[-1]
    assert key.startswith("ovn_")
    with running_server(tmp_path) as base:
        unauth = httpx.get(f"{base}/v1beta/batches/abc")
        assert unauth.status_code == 401
        authed = httpx.get(f"{base}/v1beta/batches/abc", headers={"x-goog-api-key": key})
        assert authed.status_code != 401
        by_query = httpx.get(f"{base}/v1beta/batches/abc", params={"key": key})
        assert by_query.status_code != 401


def test_serve_refuses_a_public_bind_without_keys(tmp_path: Path) -> None:
    res = overnight("serve", "--host", "0.0.0.0", "--port", "0", "-d", "data", cwd=tmp_path)
    assert res.returncode == 2
    assert "refusing to serve on 0.0.0.0 without API keys" in res.stderr
    assert "overnight keys create" in res.stderr
