"""The layering of docs/architecture.md holds at run time, and modules stay small.

`lint-imports` (``make lint``) checks the import graph statically against the contracts
in pyproject.toml; these tests check what a fresh interpreter actually loads, and the
size and privacy rules the graph cannot see.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "overnight"

MAX_LINES = 500

# What the API may load: the backend registry and its option models are light data.
LIGHT_BACKEND_MODULES = {
    "overnight.backends",
    "overnight.backends.registry",
    "overnight.backends.options",
}
MODEL_RUNTIMES = ("torch", "transformers", "sentence_transformers", "vllm")

LOADED_BY_THE_API = textwrap.dedent(
    """
    import json, sys, tempfile
    from types import SimpleNamespace

    import overnight.api.server
    from overnight.api.server import create_app
    from overnight.config import load_settings

    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(environ={}, overrides={"data_dir": tmp})
        # create_app reads only the server settings while building the app.
        app = create_app(SimpleNamespace(settings=settings))
        app.openapi()
    print(json.dumps(sorted(sys.modules)))
    """
)


def _is_heavy(name: str) -> bool:
    if name == "overnight.engine" or name.startswith("overnight.engine."):
        return True
    if name.startswith("overnight.backends.") and name not in LIGHT_BACKEND_MODULES:
        return True
    return name.split(".")[0] in MODEL_RUNTIMES


def test_the_api_loads_no_engine_no_backend_code_and_no_torch() -> None:
    done = subprocess.run(
        [sys.executable, "-c", LOADED_BY_THE_API],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert "overnight.api.server" in loaded
    heavy = [name for name in loaded if _is_heavy(name)]
    assert heavy == [], f"importing the API loaded {heavy}"


def _modules() -> list[tuple[str, Path]]:
    return sorted((p.relative_to(PACKAGE).as_posix(), p) for p in PACKAGE.rglob("*.py"))


def test_no_module_is_over_the_size_limit() -> None:
    over = {
        name: n
        for name, path in _modules()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert over == {}, (
        f"modules over {MAX_LINES} lines: {over}; split them by noun (shared/STYLE.md §1)"
    )


def _private_imports(path: Path) -> list[str]:
    """Private names (``_x``) this backends module imports from another backends module."""
    own = f"overnight.backends.{path.stem}"
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:  # relative: resolve against overnight.backends
            base = "overnight.backends" + (f".{node.module}" if node.module else "")
        else:
            base = node.module or ""
        if not base.startswith("overnight.backends") or base == own:
            continue
        found += [
            f"{base}.{alias.name}"
            for alias in node.names
            if alias.name.startswith("_") and not alias.name.startswith("__")
        ]
    return found


@pytest.mark.parametrize("name", [name for name, _ in _modules() if name.startswith("backends/")])
def test_backends_import_no_private_names_from_each_other(name: str) -> None:
    found = _private_imports(PACKAGE / name)
    assert found == [], (
        f"{name} imports private names {found}: make them public in their module, "
        "or move them to a module both can import"
    )
