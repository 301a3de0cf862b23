"""The injectable clock: nothing in serviceloop reads the system time directly."""

from __future__ import annotations

import os
import time
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

    The offset is read again only when the file's identity, size or modification time
    changed (one `stat` instead of opening and reading it on every call). A file modified
    within SETTLED seconds of the read is read again the next time too: file times come
    from a coarse clock, and a second write of the same size in the same tick would
    otherwise go unseen.
    """

    SETTLED = 0.5  # seconds; far coarser than any file system's time stamps

    def __init__(self, path: str) -> None:
        self.path = path
        self._seen: tuple | None = None  # (inode, size, mtime_ns) of a settled read
        self._offset = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC) + self._current_offset()

    def _current_offset(self) -> timedelta:
        try:
            stat = os.stat(self.path)
            seen = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
            if seen == self._seen:
                return self._offset
            with open(self.path) as handle:
                offset = timedelta(seconds=float(handle.read().strip() or 0))
        except FileNotFoundError:
            self._seen = None
            return timedelta(0)
        settled = time.time() - stat.st_mtime_ns / 1e9 > self.SETTLED
        self._seen, self._offset = (seen if settled else None), offset
        return offset


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
