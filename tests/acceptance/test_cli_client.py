"""The client commands (submit, status, ls, results, cancel) against a real ``overnight serve``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.helpers import read_jsonl, request, write_jsonl
from tests.serving import free_port, running_server

CLIENT_ENV = {"OVERNIGHT_SERVER_URL", "OVERNIGHT_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY"}


def overnight(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    inherited = {k: v for k, v in os.environ.items() if k not in CLIENT_ENV}
    return subprocess.run(
        [sys.executable, "-m", "overnight.cli.main", *args],
        cwd=cwd,
        env={**inherited, "COLUMNS": "200", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(tmp_path_factory.mktemp("cli-client")) as base:
        yield base


def test_submit_wait_then_results(server: str, tmp_path: Path) -> None:
    keys = [f"k{i}" for i in range(20)]
    write_jsonl(tmp_path / "in.jsonl", ({"key": k, "request": request(f"hello {k}")} for k in keys))
    submitted = overnight(
        "submit", "in.jsonl", "--model", "echo", "--wait", "--display-name", "cli test",
        "--server", server, cwd=tmp_path,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    name = submitted.stdout.strip().splitlines()[-1]
    assert name.startswith("batches/")

    got = overnight("results", name, "-o", "out.jsonl", "--server", server, cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    lines = read_jsonl(tmp_path / "out.jsonl")
    assert sorted(line["key"] for line in lines) == sorted(keys)
    first = next(line for line in lines if line["key"] == "k0")
    assert first["response"]["candidates"][0]["content"]["parts"][0]["text"] == "echo: hello k0"

    shown = overnight("status", name.removeprefix("batches/"), "--server", server, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "SUCCEEDED" in shown.stdout and "20" in shown.stdout

    listed = overnight("ls", "--page-size", "10", "--server", server, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert name in listed.stdout


def test_embed_submit_infers_kind(server: str, tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "emb.jsonl",
        (
            {"key": f"e{i}", "request": {"content": {"parts": [{"text": f"t {i}"}]}}}
            for i in range(3)
        ),
    )
    submitted = overnight(
        "submit", "emb.jsonl", "--model", "echo", "--kind", "embed", "--wait",
        "--server", server, cwd=tmp_path,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    name = submitted.stdout.strip().splitlines()[-1]
    got = overnight("results", name, "-o", "emb-out.jsonl", "--server", server, cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    lines = read_jsonl(tmp_path / "emb-out.jsonl")
    assert [len(line["response"]["embedding"]["values"]) for line in lines] == [8, 8, 8]


def test_cancel_slow_batch(server: str, tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "slow.jsonl",
        ({"key": f"s{i}", "request": request(f"slow {i}")} for i in range(400)),
    )
    submitted = overnight(
        "submit", "slow.jsonl", "--model", "slow-echo", "--server", server, cwd=tmp_path
    )
    assert submitted.returncode == 0, submitted.stderr
    name = submitted.stdout.strip().splitlines()[-1]
    cancelled = overnight("cancel", name, "--server", server, cwd=tmp_path)
    assert cancelled.returncode == 0, cancelled.stderr
    assert name in cancelled.stderr
    shown = overnight("status", name, "--server", server, cwd=tmp_path)
    assert "CANCEL" in shown.stdout


def test_server_errors_and_unreachable(server: str, tmp_path: Path) -> None:
    missing = overnight("status", "batches/nosuchbatch", "--server", server, cwd=tmp_path)
    assert missing.returncode == 1
    assert "error" in missing.stderr and "nosuchbatch" in missing.stderr

    write_jsonl(tmp_path / "in.jsonl", [{"key": "a", "request": request("x")}])
    unknown = overnight("submit", "in.jsonl", "--model", "nope", "--server", server, cwd=tmp_path)
    assert unknown.returncode == 1
    assert "nope" in unknown.stderr and "echo" in unknown.stderr  # the known models

    dead = f"http://127.0.0.1:{free_port()}"
    down = overnight("ls", "--server", dead, cwd=tmp_path)
    assert down.returncode == 1
    assert f"cannot reach Overnight at {dead}" in down.stderr
    assert "overnight serve" in down.stderr
    assert "Traceback" not in down.stderr


def test_results_of_unfinished_batch_is_a_clear_error(server: str, tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "slow.jsonl", ({"key": f"s{i}", "request": request("x")} for i in range(200))
    )
    name = overnight(
        "submit", "slow.jsonl", "--model", "slow-echo", "--server", server, cwd=tmp_path
    ).stdout.strip()
    early = overnight("results", name, "-o", "x.jsonl", "--server", server, cwd=tmp_path)
    assert early.returncode == 1 and "no results yet" in early.stderr
    assert not (tmp_path / "x.jsonl").exists()
    overnight("cancel", name, "--server", server, cwd=tmp_path)


def test_api_key_from_flag_or_environment(tmp_path: Path) -> None:
    with running_server(tmp_path / "srv") as base:
        created = overnight("keys", "create", "alice", "-d", "data", cwd=tmp_path / "srv")
        assert created.returncode == 0, created.stderr
        key = created.stdout.split()[-1]
        time.sleep(2.1)  # the server re-reads whether keys exist every 2 s
        refused = overnight("ls", "--server", base, cwd=tmp_path)
        assert refused.returncode == 1 and "API key" in refused.stderr
        flagged = overnight("ls", "--server", base, "--api-key", key, cwd=tmp_path)
        assert flagged.returncode == 0, flagged.stderr
        from_env = overnight(
            "ls", cwd=tmp_path, env={"GEMINI_API_KEY": key, "OVERNIGHT_SERVER_URL": base}
        )
        assert from_env.returncode == 0, from_env.stderr
