"""The CLI's exit: once vLLM is loaded it skips the interpreter's teardown, and must
still print everything and exit with the command's own code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# Stand in for a loaded vLLM (a module entry is all the exit looks at), then run the CLI.
SCRIPT = """
import sys, types
if {fake_vllm}:
    sys.modules["vllm"] = types.ModuleType("vllm")
sys.argv = ["overnight", *{argv!r}]
from overnight.cli.main import main
main()
"""


def cli(tmp_path: Path, *argv: str, fake_vllm: bool) -> subprocess.CompletedProcess[str]:
    code = SCRIPT.format(fake_vllm=fake_vllm, argv=list(argv))
    return subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("fake_vllm", [False, True])
def test_exit_codes_and_output_survive_the_fast_exit(tmp_path: Path, fake_vllm: bool) -> None:
    ok = cli(tmp_path, "version", fake_vllm=fake_vllm)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip()  # the version, flushed before the process left

    missing = cli(
        tmp_path, "run", "nope.jsonl", "-o", "out.jsonl", "-d", "data", fake_vllm=fake_vllm
    )
    assert missing.returncode == 1
    assert "nope.jsonl does not exist" in missing.stdout + missing.stderr

    usage = cli(tmp_path, "run", fake_vllm=fake_vllm)  # a missing argument: typer's usage error
    assert usage.returncode == 2
    assert "Missing argument" in usage.stdout + usage.stderr
