"""Live state in Redis: the latest reading and status of every device (written by the poller).

Key ``ews:<site>:live:<device>`` holds the JSON of ``LiveDevice``; the API reads it without
touching ClickHouse.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from .events import DeviceState


def live_key(site: str, device: str) -> str:
    return f"ews:{site}:live:{device}"


class LiveDevice(BaseModel):
    device: str
    state: DeviceState = "on"
    reason: str = ""
    updated_at: datetime | None = Field(default=None, description="Time of the last reading (UTC).")
    values: dict[str, float] = {}
    states: dict[str, str] = {}
