"""The reaper: expire overdue batches, and free the leases of dead processes.

Lease owners are named ``host:pid:random``. A process killed outright (SIGKILL, OOM)
leaves its shard leases behind; the reaper of any worker on the same host sees that
the pid no longer exists and gives them back at once, so a rerun resumes without
waiting ``engine.lease_seconds``. Leases of other hosts simply expire.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket

from overnight.store.base import WorkQueue

log = logging.getLogger("overnight.worker")


def new_owner_id() -> str:
    """``host:pid:random``; the reaper uses host and pid to spot dead owners."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def owner_is_dead(owner: str) -> bool:
    """True only if ``owner`` ran on this host and its process no longer exists."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


async def reap(queue: WorkQueue, owner: str, now: float) -> None:
    """Expire batches past their deadline at ``now``; release every shard lease held
    by a dead process on this host (never ``owner``'s own)."""
    await queue.expire_batches(now)
    for other in await queue.lease_owners():
        if other != owner and owner_is_dead(other):
            released = await queue.release_owner(other)
            log.info("released %d shard lease(s) of dead worker %s", released, other)
