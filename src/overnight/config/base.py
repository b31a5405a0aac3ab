"""What every settings section shares: unknown keys are errors, assignments are checked."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A table of settings (``[engine]``, ``[models.NAME]`` …)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
