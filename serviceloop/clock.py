"""The injectable clock: nothing in serviceloop reads the system time directly."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """A clock a test moves by hand."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 11, 2, 9, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, **delta: float) -> datetime:
        self._now += timedelta(**delta)
        return self._now

    def set(self, moment: datetime) -> None:
        self._now = moment


class OffsetFileClock:
    """System time plus an offset in seconds read from a file.

    Lets a test move the time of services running in other processes
    (`SERVICELOOP_CLOCK=file:/path`); a missing or empty file means no offset.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def now(self) -> datetime:
        try:
            with open(self.path) as handle:
                offset = float(handle.read().strip() or 0)
        except FileNotFoundError:
            offset = 0.0
        return datetime.now(UTC) + timedelta(seconds=offset)


def clock_from_setting(setting: object) -> Clock:
    if hasattr(setting, "now"):
        return setting  # type: ignore[return-value]
    text = str(setting or "system")
    if text == "system":
        return SystemClock()
    if text.startswith("file:"):
        return OffsetFileClock(os.path.expanduser(text[len("file:"):]))
    raise ValueError(f"unknown clock setting {text!r}: use 'system' or 'file:PATH'")


def isoformat(moment: datetime) -> str:
    """UTC, microseconds, 'Z': the one textual form of a time in events."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
