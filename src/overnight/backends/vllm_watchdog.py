"""Kills the vLLM engine's processes when the process that started them dies.

vLLM's engine core does not watch its parent, so a killed ``overnight run`` (SIGKILL
included) would leave the engine running and holding its memory. The vllm backend
starts this module as a tiny process of its own::

    python -m overnight.backends.vllm_watchdog PID [PID ...]

with a pipe on its stdin. It waits for the pipe to close, which happens when the
process that started it exits, however it exits, or when the backend closes it on
purpose; then it kills the given processes and all their descendants.

Standard library only, so it starts in a few milliseconds and never imports torch.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path

PROC = Path("/proc")


def children(pid: int, proc: Path = PROC) -> set[int]:
    """Direct children of ``pid`` (Linux /proc; empty elsewhere)."""
    found = set()
    for stat in proc.glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(stat.parent.name))
    return found


def process_tree(roots: list[int], proc: Path = PROC) -> list[int]:
    """``roots`` and all their descendants, parents before their children."""
    todo, found = list(roots), []
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children(pid, proc))
    return found


def kill_tree(roots: list[int]) -> None:
    """SIGKILL ``roots`` and their descendants; ones already gone are skipped."""
    for pid in process_tree(roots):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def main(argv: list[str]) -> int:
    sys.stdin.buffer.read()  # returns at EOF: the parent closed the pipe or died
    kill_tree([int(pid) for pid in argv])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
