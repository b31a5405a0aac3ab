"""The local backends apply their ``threads`` option on the model's own thread (the one
whose OpenMP thread count torch uses), with the real bundled models."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from overnight.backends.sentence_transformers import SentenceTransformersBackend
from overnight.backends.threads import allowed_cpus, thread_ceiling
from overnight.backends.transformers import TransformersBackend
from overnight.config import builtin_models
from overnight.domain.requests import EmbedRequest, GenerateRequest

pytestmark = pytest.mark.model
torch = pytest.importorskip("torch", reason="the local extra (torch) is not installed")

Local = TransformersBackend | SentenceTransformersBackend


def backend(name: str, threads: Any, cache_dir: Path) -> Local:
    settings = builtin_models()[name].model_copy(update={"options": {"threads": threads}})
    kind = TransformersBackend if name.startswith("smollm2") else SentenceTransformersBackend
    return kind(name, settings, cache_dir)


def use(local: Local) -> int:
    """Run one small request, then read torch's thread count on the model's thread."""

    async def go() -> int:
        if isinstance(local, TransformersBackend):
            contents = [{"role": "user", "parts": [{"text": "Hi"}]}]
            body = {"contents": contents, "generationConfig": {"maxOutputTokens": 2}}
            await local.generate([GenerateRequest.model_validate(body)])
        else:
            await local.embed(
                [EmbedRequest.model_validate({"content": {"parts": [{"text": "Hi"}]}})]
            )
        count: int = await local._thread.call(torch.get_num_threads)
        await local.close()
        return count

    return asyncio.run(go())


@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "all-minilm-l6-v2"])
def test_threads_apply_on_the_model_thread(
    name: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    cache_dir = tmp_path_factory.getbasetemp() / "threads-cache"  # converted once, for both
    assert use(backend(name, 1, cache_dir)) == 1

    auto = backend(name, "auto", cache_dir)
    count = use(auto)
    assert auto.governor is not None and auto.governor.pinned is None
    assert count == auto.governor.threads
    assert 1 <= count <= thread_ceiling(allowed_cpus())
