"""Admission: one streaming pass cuts the input into contiguous, bounded shards."""

from __future__ import annotations

import io
import json

from overnight.domain.batches import BatchKind
from overnight.engine.admission import Admission, cut_shards, iter_lines


def good(key: str, text: str = "hello") -> bytes:
    body = {"key": key, "request": {"contents": [{"parts": [{"text": text}]}]}}
    return json.dumps(body).encode() + b"\n"


def admit(
    data: bytes,
    *,
    shard_size: int = 100,
    shard_max_bytes: int = 1 << 20,
    kind: BatchKind = BatchKind.GENERATE,
) -> Admission:
    return cut_shards(
        io.BytesIO(data), kind, shard_size=shard_size, shard_max_bytes=shard_max_bytes
    )


def assert_covers(admission: Admission, data: bytes, start: int = 0) -> None:
    """Shards are contiguous, in order, and cover the input from ``start`` to the end."""
    assert admission.shards, "expected at least one shard"
    assert [s.seq for s in admission.shards] == list(range(len(admission.shards)))
    assert admission.shards[0].byte_start == start
    assert admission.shards[-1].byte_end == len(data)
    for before, after in zip(admission.shards, admission.shards[1:], strict=False):
        assert before.byte_end == after.byte_start
    assert sum(s.request_count for s in admission.shards) == admission.request_count


def request_lines_by_shard(admission: Admission, data: bytes) -> list[list[tuple[int, bytes]]]:
    """Re-read each shard's byte range as a worker would: (physical line no, line)."""
    out = []
    for shard in admission.shards:
        chunk = data[shard.byte_start : shard.byte_end]
        lines = chunk.splitlines(keepends=True)
        out.append([(shard.first_line + i, raw) for i, raw in enumerate(lines) if raw.strip()])
    return out


def test_cuts_by_shard_size() -> None:
    data = b"".join(good(f"k{i}") for i in range(10))
    admission = admit(data, shard_size=3)
    assert [s.request_count for s in admission.shards] == [3, 3, 3, 1]
    assert [s.first_line for s in admission.shards] == [1, 4, 7, 10]
    assert admission.request_count == 10
    assert admission.lines == 10
    assert admission.has_valid_line
    assert admission.first_error is None
    assert_covers(admission, data)


def test_cuts_by_shard_max_bytes() -> None:
    lines = [good(f"k{i}") for i in range(9)]
    size = len(lines[0])
    assert all(len(raw) == size for raw in lines)
    data = b"".join(lines)
    limit = size * 2 + size // 2  # room for two lines, not three
    admission = admit(data, shard_max_bytes=limit)
    assert [s.request_count for s in admission.shards] == [2, 2, 2, 2, 1]
    assert [s.first_line for s in admission.shards] == [1, 3, 5, 7, 9]
    for shard in admission.shards:
        assert shard.byte_end - shard.byte_start <= limit
    assert_covers(admission, data)


def test_line_exactly_filling_the_budget_stays() -> None:
    lines = [good(f"k{i}") for i in range(4)]
    data = b"".join(lines)
    admission = admit(data, shard_max_bytes=len(lines[0]) * 2)
    assert [s.request_count for s in admission.shards] == [2, 2]


def test_blank_lines_are_not_requests_but_keep_physical_numbers() -> None:
    data = b"\n" + good("a") + b"   \n" + good("b") + b"\n\n" + good("c") + good("d") + b"\n"
    admission = admit(data, shard_size=2)
    assert admission.request_count == 4
    assert admission.lines == 9
    assert [s.request_count for s in admission.shards] == [2, 2]
    assert_covers(admission, data)
    seen = request_lines_by_shard(admission, data)
    keys = [[(n, json.loads(raw)["key"]) for n, raw in shard] for shard in seen]
    assert keys == [[(2, "a"), (4, "b")], [(7, "c"), (8, "d")]]
    assert admission.shards[1].first_line == 7


def test_only_blank_lines_give_no_shards() -> None:
    admission = admit(b"\n  \n\t\n")
    assert admission.shards == []
    assert admission.request_count == 0
    assert admission.lines == 3
    assert not admission.has_valid_line


def test_empty_input() -> None:
    admission = admit(b"")
    assert admission.shards == []
    assert admission.request_count == 0
    assert not admission.has_valid_line
    assert admission.first_error is None


def test_every_line_bad_has_no_valid_line() -> None:
    data = b'{"key": "a"\n' + b"[1, 2]\n" + b'{"key": "c", "request": {"contents": []}}\n'
    admission = admit(data)
    assert not admission.has_valid_line
    assert admission.first_error is not None
    assert admission.first_error.startswith("line 1: invalid JSON")
    assert admission.request_count == 3  # bad lines still become error lines
    assert_covers(admission, data)


def test_first_error_is_kept_when_a_later_line_is_valid() -> None:
    data = b"\n" + b"not json\n" + good("ok")
    admission = admit(data)
    assert admission.has_valid_line
    assert admission.first_error is not None
    assert admission.first_error.startswith("line 2:")
    assert admission.request_count == 2


def test_validity_depends_on_the_batch_kind() -> None:
    embed = b'{"key": "e", "request": {"content": {"parts": [{"text": "x"}]}}}\n'
    assert admit(embed, kind=BatchKind.EMBED).has_valid_line
    assert not admit(embed, kind=BatchKind.GENERATE).has_valid_line


def test_oversize_line_is_consumed_and_counted() -> None:
    limit = 200
    huge = good("huge", "x" * 5000)
    assert len(huge) > limit
    small = good("s")
    data = small + huge + small
    admission = admit(data, shard_max_bytes=limit)
    assert admission.request_count == 3
    assert admission.lines == 3
    assert admission.has_valid_line
    assert_covers(admission, data)
    # The line after the oversize one starts where the oversize one ends.
    starts = {s.first_line: s.byte_start for s in admission.shards}
    assert starts[3] == len(small) + len(huge)


def test_oversize_first_line_is_the_first_error() -> None:
    data = good("huge", "x" * 5000) + good("s")
    admission = admit(data, shard_max_bytes=200)
    assert admission.has_valid_line
    assert admission.first_error == "line 1: longer than 200 bytes"


def test_iter_lines_does_not_return_oversize_lines() -> None:
    huge = b"y" * 10_000 + b"\n"
    data = b"ab\n" + huge + b"cd"
    items = list(iter_lines(io.BytesIO(data), 100))
    assert items == [(0, b"ab\n", 3), (3, None, len(huge)), (3 + len(huge), b"cd", 2)]


def test_iter_lines_oversize_at_end_without_newline() -> None:
    data = b"ab\n" + b"z" * 500
    items = list(iter_lines(io.BytesIO(data), 100))
    assert items == [(0, b"ab\n", 3), (3, None, 500)]


def test_iter_lines_stops_at_end() -> None:
    data = good("a") + good("b") + good("c")
    first = len(good("a"))
    f = io.BytesIO(data)
    f.seek(first)
    items = list(iter_lines(f, 1000, end=first + len(good("b"))))
    assert [raw for _, raw, _ in items] == [good("b")]


def test_file_without_trailing_newline() -> None:
    data = good("a") + good("b").rstrip(b"\n")
    admission = admit(data, shard_size=1)
    assert admission.request_count == 2
    assert [s.first_line for s in admission.shards] == [1, 2]
    assert_covers(admission, data)
    last = admission.shards[-1]
    assert json.loads(data[last.byte_start : last.byte_end])["key"] == "b"


def test_reads_from_the_current_position() -> None:
    header = b"ignored preamble\n"
    data = header + good("a") + good("b")
    f = io.BytesIO(data)
    f.seek(len(header))
    admission = cut_shards(f, BatchKind.GENERATE, shard_size=10, shard_max_bytes=1 << 20)
    assert admission.request_count == 2
    assert admission.has_valid_line
    assert_covers(admission, data, start=len(header))
