"""The vLLM engine's surroundings that need no vLLM: the allocator, the thread binding,
the engine arguments, and the watchdog that outlives a killed process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from overnight.backends import vllm_runtime
from overnight.backends.options import VllmOptions
from overnight.backends.vllm_watchdog import process_tree
from overnight.config import builtin_models
from overnight.errors import BackendUnavailable

NAME = "smollm2-135m-instruct-vllm"


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_cpu_allocator_preloads_tcmalloc_for_the_engine_processes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LD_PRELOAD", "/opt/other.so")
    monkeypatch.setattr(vllm_runtime, "find_tcmalloc", lambda: "/lib/libtcmalloc_minimal.so.4")
    vllm_runtime.preload_allocator(NAME, "system")
    assert os.environ["LD_PRELOAD"] == "/opt/other.so"
    vllm_runtime.preload_allocator(NAME, "auto")
    assert os.environ["LD_PRELOAD"] == "/lib/libtcmalloc_minimal.so.4:/opt/other.so"
    vllm_runtime.preload_allocator(NAME, "auto")  # a second model does not add it twice
    assert os.environ["LD_PRELOAD"].count("libtcmalloc") == 1

    monkeypatch.delenv("LD_PRELOAD")
    monkeypatch.setattr(vllm_runtime, "find_tcmalloc", lambda: None)
    vllm_runtime.preload_allocator(NAME, "auto")  # missing: the system allocator, no error
    assert "LD_PRELOAD" not in os.environ
    with pytest.raises(BackendUnavailable, match="apt-get install libtcmalloc-minimal4"):
        vllm_runtime.preload_allocator(NAME, "tcmalloc")


def test_thread_binding_all_lists_this_process_cores() -> None:
    cores = sorted(os.sched_getaffinity(0))
    binding = vllm_runtime.thread_binding("all")
    listed: list[int] = []
    for part in binding.split(","):
        low, _, high = part.partition("-")
        listed += range(int(low), int(high or low) + 1)
    assert listed == cores
    assert vllm_runtime.thread_binding("0-1") == "0-1"


def test_engine_args_follow_the_options_and_settings() -> None:
    settings = builtin_models()[NAME]
    options = VllmOptions(max_model_len=1024, structured_outputs_backend="guidance")
    on_cpu = vllm_runtime.engine_args("/w", True, options, settings)
    assert on_cpu["dtype"] == "bfloat16" and on_cpu["enforce_eager"] is True
    assert on_cpu["max_num_seqs"] == settings.max_batch_size
    assert on_cpu["max_model_len"] == 1024
    assert on_cpu["structured_outputs_config"] == {"backend": "guidance"}
    assert "max_num_batched_tokens" not in on_cpu
    on_gpu = vllm_runtime.engine_args("/w", False, VllmOptions(runner="pooling"), settings)
    assert on_gpu["dtype"] == "auto" and on_gpu["enforce_eager"] is False
    assert on_gpu["runner"] == "pooling"


def test_the_watchdog_kills_a_process_tree_when_its_pipe_closes() -> None:
    """Started as the backend starts it (``python -m overnight.backends.vllm_watchdog``),
    it waits for its stdin to close, then kills the processes and their children."""
    sleeper = "import subprocess, sys, time; " + (
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
    )
    parent = subprocess.Popen([sys.executable, "-c", sleeper])
    try:
        deadline = time.monotonic() + 20
        while len(process_tree([parent.pid])) < 2:
            assert time.monotonic() < deadline, "the child process never started"
            time.sleep(0.05)
        tree = process_tree([parent.pid])
        watchdog = vllm_runtime.watch({parent.pid})
        assert watchdog is not None and watchdog.stdin is not None
        time.sleep(0.3)
        assert all(alive(pid) for pid in tree), "the watchdog must wait for its pipe to close"
        watchdog.stdin.close()
        assert watchdog.wait(20) == 0
        parent.wait(10)
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in tree):
            assert time.monotonic() < deadline, "the watchdog left a process running"
            time.sleep(0.05)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_no_watchdog_without_processes() -> None:
    assert vllm_runtime.watch(set()) is None
