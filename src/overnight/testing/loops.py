"""Telling an answer that ends in a repetition loop from one that merely ran long.

A small model decoding greedily (or nearly) can fall into a loop: the same piece of
text, again and again, until the token limit cuts it off ("…wife's wife's wife's…").
``repetition_loop`` finds the repeated piece, so benchmarks (``bench/bench_loops.py``)
and tests can count such answers; a loop that did not run into the token limit is not
one (the model got out of it).
"""

from __future__ import annotations

MIN_REPEATS = 3  # the piece appears at least this many times in a row at the end …
MIN_SPAN = 60  # … and the repeated stretch is at least this many characters
MAX_PERIOD = 400  # longest piece looked for, in characters


def repetition_loop(text: str, finish_reason: str = "MAX_TOKENS") -> str | None:
    """The piece ``text`` repeats up to its end, if it ends in a loop; else None.

    Only an answer cut at its token limit (``finish_reason`` ``MAX_TOKENS``) can be a
    loop. The last ``max(MIN_REPEATS * p, MIN_SPAN)`` characters must repeat with some
    period ``p`` of at most ``MAX_PERIOD`` characters; the shortest such piece is
    returned (the text may stop partway through its last repetition).
    """
    if finish_reason != "MAX_TOKENS":
        return None
    for period in range(1, MAX_PERIOD + 1):
        span = max(MIN_REPEATS * period, MIN_SPAN)
        if span + period > len(text):
            break
        tail = text[-span - period :]
        if tail[period:] == tail[:-period]:
            return text[-period:]
    return None
