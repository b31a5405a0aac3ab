"""Plumbing shared by the local backends."""

from __future__ import annotations

import pytest

from overnight.backends.local import pick_device, pick_dtype
from overnight.backends.options import SentenceTransformersOptions, TransformersOptions
from overnight.errors import BackendUnavailable, ConfigError

torch = pytest.importorskip("torch", reason="the local extra (torch) is not installed")


def test_auto_device_follows_what_torch_sees() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device(torch, "auto").type == expected


def test_a_device_string_torch_rejects_is_named() -> None:
    with pytest.raises(BackendUnavailable, match="device 'gpu-please'"):
        pick_device(torch, "gpu-please")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_says_so() -> None:
    with pytest.raises(BackendUnavailable, match="torch sees no CUDA device"):
        pick_device(torch, "cuda:0")


def test_unknown_options_are_named_with_what_is_known() -> None:
    with pytest.raises(ConfigError) as info:
        TransformersOptions.parse("m", {"thread": 2})
    assert info.value.message == (
        "model 'm': options.thread: unknown transformers option (did you mean threads?); "
        "known transformers options: threads, model_version"
    )
    with pytest.raises(ConfigError, match="unknown sentence-transformers option"):
        SentenceTransformersOptions.parse("m", {"batch": 2})


def test_a_fixed_dtype_is_taken_as_asked() -> None:
    cpu = torch.device("cpu")
    assert pick_dtype(torch, "float16", cpu) is torch.float16
    assert pick_dtype(torch, "auto", cpu) in (torch.bfloat16, torch.float32)
