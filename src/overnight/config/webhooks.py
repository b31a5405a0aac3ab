"""``[webhooks]``: webhook deliveries."""

from __future__ import annotations

from pydantic import Field

from overnight.config.base import Section


class WebhookSettings(Section):
    """Webhook deliveries (`overnight serve` sends them; see docs/webhooks.md)."""

    allow_private_addresses: bool = Field(
        False,
        description="Deliver to loopback, private, link-local and other non-public addresses. "
        "Off by default: a webhook URI could otherwise make the server reach services on its "
        "own network (server-side request forgery).",
    )
    timeout_seconds: float = Field(
        15.0, gt=0, description="How long one delivery may take before it counts as failed."
    )
    retry_initial_seconds: float = Field(
        5.0,
        gt=0,
        description="Wait after a first failed delivery; it doubles with each further failure, "
        "with jitter, up to `retry_max_seconds`.",
    )
    retry_max_seconds: float = Field(
        3600.0, gt=0, description="Longest wait between two attempts at one delivery."
    )
    retry_window_hours: float = Field(
        24.0,
        gt=0,
        description="An event not delivered this long after it happened is given up.",
    )
    disable_after_failures: int = Field(
        20,
        ge=1,
        description="A webhook whose deliveries failed this many times in a row, over at least "
        "`disable_after_hours`, is disabled (state disabled_due_to_failed_deliveries) until "
        "it is enabled again.",
    )
    disable_after_hours: float = Field(
        24.0,
        ge=0,
        description="How long a webhook must keep failing before it is disabled (with "
        "`disable_after_failures`).",
    )
    max_per_tenant: int = Field(100, ge=1, description="Most webhooks one tenant may register.")
    concurrency: int = Field(16, ge=1, description="Most deliveries in flight at once.")
    poll_seconds: float = Field(
        1.0, gt=0, description="How often `overnight serve` looks for events to deliver."
    )
