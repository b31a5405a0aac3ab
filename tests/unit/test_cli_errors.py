"""The CLI prints error messages as they are: rich markup in them is not interpreted."""

from __future__ import annotations

import pytest

from overnight.backends.local import INSTALL_HINT as LOCAL_HINT
from overnight.backends.vllm import INSTALL_HINT as VLLM_HINT
from overnight.cli.main import _fail
from overnight.errors import BackendUnavailable


@pytest.mark.parametrize(("hint", "extra"), [(VLLM_HINT, ".[vllm]"), (LOCAL_HINT, ".[local]")])
def test_install_hints_keep_their_extras(
    capsys: pytest.CaptureFixture[str], hint: str, extra: str
) -> None:
    exit = _fail(BackendUnavailable(f"model 'm' needs it; run: {hint}"), 1)
    assert exit.exit_code == 1
    printed = capsys.readouterr().err
    assert f"pip install -e '{extra}'" in printed
