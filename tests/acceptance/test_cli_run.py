"""``overnight run`` as a user runs it: a real process, real files, real signals."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.helpers import read_jsonl, request, write_jsonl

FAKE_CONFIG = """
[engine]
shard_size = 8
heartbeat_seconds = 0.5
[models.echo]
backend = "fake"
options = { latency_s = 0.1, max_batch_size = 4 }
"""


def overnight(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300):
    return subprocess.run(
        [sys.executable, "-m", "overnight.cli.main", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "overnight.cli.main", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def kill_three_times_then_finish(
    tmp_path: Path, args: list[str], window: tuple[float, float], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    rng = random.Random()
    interrupted = 0
    for attempt in range(3):
        proc = start(*args, cwd=tmp_path, env=env)
        delay = rng.uniform(*window)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        print(f"kill {attempt + 1} after {delay:.2f}s: rc={proc.returncode}")
        interrupted += proc.returncode == -signal.SIGKILL
    assert interrupted, "no kill landed while the run was still working; the test proved nothing"
    return overnight(*args, cwd=tmp_path, env=env, timeout=600)


def assert_exactly_once(out: Path, n: int) -> list[dict[str, object]]:
    lines = read_jsonl(out)
    keys = [line["key"] for line in lines]
    assert len(keys) == n, f"{len(keys)} lines for {n} requests"
    assert len(set(keys)) == n, "duplicate keys in the output"
    assert set(keys) == {f"k{i}" for i in range(n)}
    assert all("response" in line for line in lines), [line for line in lines if "error" in line][
        :3
    ]
    return lines


def test_sigkill_three_times_then_resume_answers_each_key_once(tmp_path: Path) -> None:
    (tmp_path / "overnight.toml").write_text(FAKE_CONFIG)
    write_jsonl(
        tmp_path / "in.jsonl", ({"key": f"k{i}", "request": request(f"q {i}")} for i in range(200))
    )
    args = ["run", "in.jsonl", "-o", "out.jsonl", "-m", "echo", "-d", "data", "-q"]
    done = kill_three_times_then_finish(tmp_path, args, (1.0, 3.0))
    assert done.returncode == 0, done.stderr
    assert "200 succeeded, 0 failed" in done.stderr
    assert_exactly_once(tmp_path / "out.jsonl", 200)


def test_malformed_lines_are_reported_and_the_rest_succeed(tmp_path: Path) -> None:
    (tmp_path / "overnight.toml").write_text(FAKE_CONFIG)
    write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"key": "a", "request": request("fine")},
            "{broken",
            {"key": "b"},
            {"key": "c", "request": {"contents": "not a list"}},
            {"key": "d", "request": request("also fine")},
        ],
    )
    res = overnight("run", "in.jsonl", "-o", "out.jsonl", "-m", "echo", "-d", "data", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "2 succeeded, 3 failed of 5 requests" in res.stderr
    assert "line 2: invalid JSON" in res.stderr  # the summary shows the first errors
    lines = {line["key"]: line for line in read_jsonl(tmp_path / "out.jsonl")}
    assert "response" in lines["a"] and "response" in lines["d"]
    assert lines["b"]["error"]["message"].startswith("line 3: missing 'request'")
    assert "line 4" in lines["c"]["error"]["message"]
    assert "request.contents" in lines["c"]["error"]["message"]


def test_changed_input_needs_restart(tmp_path: Path) -> None:
    (tmp_path / "overnight.toml").write_text(FAKE_CONFIG)
    src = write_jsonl(tmp_path / "in.jsonl", [{"key": "k0", "request": request("x")}])
    args = ["run", "in.jsonl", "-o", "out.jsonl", "-m", "echo", "-d", "data", "-q"]
    assert overnight(*args, cwd=tmp_path).returncode == 0
    write_jsonl(
        src, [{"key": "k0", "request": request("x")}, {"key": "k1", "request": request("y")}]
    )
    res = overnight(*args, cwd=tmp_path)
    assert res.returncode == 1
    assert "changed since" in res.stderr and "--restart" in res.stderr
    res = overnight(*args, "--restart", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert [line["key"] for line in read_jsonl(tmp_path / "out.jsonl")] == ["k0", "k1"]


def test_rerun_of_a_finished_run_rewrites_results_without_work(tmp_path: Path) -> None:
    (tmp_path / "overnight.toml").write_text(FAKE_CONFIG)
    write_jsonl(tmp_path / "in.jsonl", [{"key": "k0", "request": request("x")}])
    args = ["run", "in.jsonl", "-o", "out.jsonl", "-m", "echo", "-d", "data", "-q"]
    assert overnight(*args, cwd=tmp_path).returncode == 0
    (tmp_path / "out.jsonl").unlink()
    res = overnight(*args, cwd=tmp_path)
    assert res.returncode == 0 and "1 of 1 requests already done" in res.stderr
    assert read_jsonl(tmp_path / "out.jsonl")[0]["key"] == "k0"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "in.jsonl", "-o", "o.jsonl", "-m", "no-such-model"], "is not configured"),
        (["run", "missing.jsonl", "-o", "o.jsonl", "-m", "echo"], "does not exist"),
        (
            ["run", "in.jsonl", "-o", "o.jsonl", "-m", "all-minilm-l6-v2", "--kind", "generate"],
            "cannot generate",
        ),
    ],
)
def test_bad_invocations_say_what_is_wrong(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "overnight.toml").write_text(FAKE_CONFIG)
    write_jsonl(tmp_path / "in.jsonl", [{"key": "k0", "request": request("x")}])
    res = overnight(*args, "-d", "data", cwd=tmp_path)
    assert res.returncode == 1
    assert message in res.stderr
    assert "Traceback" not in res.stderr


def test_bad_config_names_the_field(tmp_path: Path) -> None:
    (tmp_path / "overnight.toml").write_text("[engine]\nshard_size = 'many'\n")
    res = overnight("models", cwd=tmp_path)
    assert res.returncode == 2
    assert "engine.shard_size" in res.stderr and "overnight.toml" in res.stderr


def test_models_lists_builtins_and_aliases(tmp_path: Path) -> None:
    res = overnight("models", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    for name in ("smollm2-135m-instruct", "all-minilm-l6-v2", "gemini-*", "gemini-embedding-*"):
        assert name in res.stdout


def test_help_describes_run(tmp_path: Path) -> None:
    res = overnight("run", "--help", cwd=tmp_path)
    assert res.returncode == 0
    assert "--model" in res.stdout and "Resumable" in res.stdout


# ------------------------------------------------------------------ real models


@pytest.mark.model
def test_demo_sample_on_the_bundled_model(tmp_path: Path, model_cache_dir: Path) -> None:
    sample = Path(__file__).parents[2] / "src/overnight/samples/demo.jsonl"
    env = {"OVERNIGHT_MODEL_CACHE_DIR": str(model_cache_dir)}
    res = overnight(
        "run", str(sample), "-o", "out.jsonl", "-d", "data", "-q", cwd=tmp_path, env=env
    )
    assert res.returncode == 0, res.stderr
    lines = read_jsonl(tmp_path / "out.jsonl")
    expected = [json.loads(x)["key"] for x in sample.read_text().splitlines()]
    assert [line["key"] for line in lines] == expected
    for line in lines:
        response = line["response"]
        text = response["candidates"][0]["content"]["parts"][0]["text"]
        assert text.strip(), line
        usage = response["usageMetadata"]
        assert usage["promptTokenCount"] > 0 and usage["candidatesTokenCount"] > 0
        assert usage["totalTokenCount"] == usage["promptTokenCount"] + usage["candidatesTokenCount"]
        assert response["modelVersion"] == "SmolLM2-135M-Instruct"
    show = overnight("show", "out.jsonl", cwd=tmp_path)
    assert show.returncode == 0 and "joke" in show.stdout


@pytest.mark.model
def test_sigkill_resume_on_the_bundled_model(tmp_path: Path, model_cache_dir: Path) -> None:
    env = {"OVERNIGHT_MODEL_CACHE_DIR": str(model_cache_dir), "OVERNIGHT_ENGINE__SHARD_SIZE": "16"}
    write_jsonl(
        tmp_path / "in.jsonl",
        (
            {"key": f"k{i}", "request": request(f"Say the number {i}.", maxOutputTokens=6)}
            for i in range(200)
        ),
    )
    args = ["run", "in.jsonl", "-o", "out.jsonl", "-d", "data", "-q"]
    done = kill_three_times_then_finish(tmp_path, args, (6.0, 14.0), env=env)
    assert done.returncode == 0, done.stderr
    lines = assert_exactly_once(tmp_path / "out.jsonl", 200)
    assert all(line["response"]["usageMetadata"]["candidatesTokenCount"] > 0 for line in lines)  # type: ignore[index]


@pytest.mark.model
def test_embedding_run_on_the_bundled_model(tmp_path: Path, model_cache_dir: Path) -> None:
    write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"key": "a", "request": {"content": {"parts": [{"text": "The cat sat on the mat."}]}}},
            {
                "key": "b",
                "request": {
                    "content": {"parts": [{"text": "A dog ran."}]},
                    "outputDimensionality": 32,
                },
            },
        ],
    )
    env = {"OVERNIGHT_MODEL_CACHE_DIR": str(model_cache_dir)}
    res = overnight(
        "run",
        "in.jsonl",
        "-o",
        "out.jsonl",
        "--kind",
        "embed",
        "-d",
        "data",
        "-q",
        cwd=tmp_path,
        env=env,
    )
    assert res.returncode == 0, res.stderr
    lines = {line["key"]: line["response"] for line in read_jsonl(tmp_path / "out.jsonl")}
    assert len(lines["a"]["embedding"]["values"]) == 384
    assert len(lines["b"]["embedding"]["values"]) == 32


def test_ctrl_c_releases_work_and_the_rerun_resumes(tmp_path: Path) -> None:
    (tmp_path / "overnight.toml").write_text(FAKE_CONFIG)
    write_jsonl(
        tmp_path / "in.jsonl", ({"key": f"k{i}", "request": request(f"q {i}")} for i in range(200))
    )
    args = ["run", "in.jsonl", "-o", "out.jsonl", "-m", "echo", "-d", "data", "-q"]
    proc = start(*args, cwd=tmp_path)
    shards = tmp_path / "data" / "blobs" / "batches"
    deadline = time.monotonic() + 30
    while not list(shards.glob("*/shards/*.jsonl")):  # interrupt mid-run, not mid-import
        assert proc.poll() is None and time.monotonic() < deadline, "the run never got going"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, output
    assert "run the same command again to resume" in output
    assert "Traceback" not in output
    res = overnight(*args, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "Resuming batch" in res.stderr
    assert_exactly_once(tmp_path / "out.jsonl", 200)
