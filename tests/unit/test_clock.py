"""The offset-file clock: every write of the offset is seen at once, and a settled file is
not read again."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime

from serviceloop.clock import OffsetFileClock


def offset_seen(clock: OffsetFileClock) -> float:
    return round((clock.now() - datetime.now(UTC)).total_seconds())


def test_writes_in_place_within_one_tick_are_each_seen(tmp_path):
    path = tmp_path / "offset"
    clock = OffsetFileClock(str(path))
    assert offset_seen(clock) == 0  # no file: no offset
    tick = time.time()
    for offset in ("3600", "7200", "1800", "9000"):
        path.write_text(offset)  # the same size each time, and (as a coarse file time
        os.utime(path, (tick, tick))  # stamp gives it) the same modification time
        assert offset_seen(clock) == int(offset)


def test_a_replaced_or_removed_file_is_seen(tmp_path):
    path = tmp_path / "offset"
    clock = OffsetFileClock(str(path))
    path.write_text("60\n")
    assert offset_seen(clock) == 60
    spare = tmp_path / "offset.tmp"
    spare.write_text("120\n")
    spare.replace(path)
    assert offset_seen(clock) == 120
    path.unlink()
    assert offset_seen(clock) == 0
    path.write_text("")
    assert offset_seen(clock) == 0


def test_a_settled_file_is_not_read_again_until_it_changes(tmp_path):
    path = tmp_path / "offset"
    clock = OffsetFileClock(str(path))
    path.write_text("3600")
    settled = time.time() - 10 * OffsetFileClock.SETTLED
    os.utime(path, (settled, settled))
    assert offset_seen(clock) == 3600
    # the same size and time stamps: taken as unchanged (what a real write cannot leave)
    path.write_text("7200")
    os.utime(path, (settled, settled))
    assert offset_seen(clock) == 3600
    os.utime(path)  # its time stamp moves, as any real write's does
    assert offset_seen(clock) == 7200
