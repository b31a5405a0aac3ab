"""Plumbing shared by the local backends."""

from __future__ import annotations

import pytest

from overnight.backends.local import check_options, pick_device
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


def test_unknown_options_are_named() -> None:
    with pytest.raises(
        ConfigError, match="unknown transformers option\\(s\\) thread; known: threads"
    ):
        check_options("m", "transformers", ["thread"], frozenset({"threads"}))
