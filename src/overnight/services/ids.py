"""Resource ids: lowercase letters and digits, as the SDK's URI parsing expects (spec §3.6)."""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_lowercase + string.digits


def new_id(length: int = 16) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))
