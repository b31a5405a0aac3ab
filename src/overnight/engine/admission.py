"""Admission: stream the input once and cut it into shards.

Shards are contiguous byte ranges holding at most ``shard_size`` requests and
``shard_max_bytes`` bytes; they are rows, not copies. Admission reads each line
once but parses only until it meets the first valid request: that proves the input
is usable (a batch with no valid line FAILS here) while keeping admission at disk
speed. Every other line is parsed by the worker that runs its shard, where a
malformed line becomes that line's error result.

Memory is bounded: lines are read with a length cap, so even a multi-gigabyte line
is consumed in pieces, and it becomes an error line.

A UTF-8 byte order mark at the start of the input (editors on Windows write one) is
skipped: the first shard starts after it, so no worker ever reads it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from overnight.domain.batches import BatchKind, ShardSpec
from overnight.domain.lines import LineError, parse_line, position

READ_CHUNK = 1 << 20
UTF8_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class Admission:
    shards: list[ShardSpec]
    request_count: int
    has_valid_line: bool
    first_error: str | None
    lines: int


def iter_lines(
    f: BinaryIO, max_line: int, end: int | None = None
) -> Iterator[tuple[int, bytes | None, int]]:
    """Yield ``(offset, line_bytes_or_None, length)``; None means "over max_line".

    An oversize line is skipped in chunks without being held in memory.
    """
    offset = f.tell()
    readline = f.readline
    while end is None or offset < end:
        limit = max_line + 1 if end is None else min(max_line + 1, end - offset)
        raw = readline(limit)
        if not raw:
            return
        length = len(raw)
        if length > max_line and not raw.endswith(b"\n"):
            while True:  # consume the rest of the oversize line
                more = readline(READ_CHUNK)
                length += len(more)
                if not more or more.endswith(b"\n"):
                    break
            yield offset, None, length
        else:
            yield offset, raw, length
        offset += length


def cut_shards(
    f: BinaryIO,
    kind: BatchKind,
    *,
    shard_size: int,
    shard_max_bytes: int,
    inline: bool = False,
) -> Admission:
    """Read ``f`` once from its current position and cut it into shards. ``inline``:
    the input holds an inline batch's items (errors name ``inlinedRequests[i]``)."""
    shards: list[ShardSpec] = []
    if f.tell() == 0 and f.read(len(UTF8_BOM)) != UTF8_BOM:
        f.seek(0)
    start = f.tell()
    start_line = 1
    count = 0
    line_no = 0
    total = 0
    valid = False
    first_error: str | None = None
    offset = start
    for offset, raw, length in iter_lines(f, shard_max_bytes):
        line_no += 1
        if raw is not None and raw.isspace():
            continue
        if not valid:
            if raw is None:
                where = position(line_no, inline)
                first_error = first_error or f"{where}: longer than {shard_max_bytes} bytes"
            else:
                try:
                    parse_line(raw, line_no, kind, inline=inline)
                    valid = True
                except LineError as exc:
                    first_error = first_error or exc.message
        if count and (count >= shard_size or offset + length - start > shard_max_bytes):
            shards.append(ShardSpec(len(shards), start, offset, start_line, count))
            start, start_line, count = offset, line_no, 0
        count += 1
        total += 1
    end = f.tell()
    if count:
        shards.append(ShardSpec(len(shards), start, end, start_line, count))
    return Admission(shards, total, valid, first_error, line_no)
