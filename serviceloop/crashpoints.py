"""Places where the fault suite can have a process killed at an exact moment.

`crash_point("orders.after_commit")` does nothing unless `SERVICELOOP_CRASH_FILE` is set (only
the fault suite sets it). Then, if the file `<SERVICELOOP_CRASH_FILE>.<point>` exists, the
first process to reach that point removes it (so exactly one process dies per arming, and its
restarted self does not die again) and kills itself with SIGKILL: no clean-up, no `finally`,
just as `kill -9` would at that instant.

The points:
- `<service>.after_commit`: an RPC's or a consumer's transaction is committed, its answer (the
  RPC reply, the message's acknowledgement) not yet sent;
- `<service>.mid_consumer`: a consumer's handler has written its effects, uncommitted;
- `<service>-relay.after_publish`: the broker has confirmed a window a relay published, its
  position is not yet recorded (the window goes out again).
"""

from __future__ import annotations

import os
import signal

_ARMING_FILE = os.environ.get("SERVICELOOP_CRASH_FILE")


def crash_point(point: str) -> None:
    if _ARMING_FILE is None:
        return
    try:
        os.unlink(f"{_ARMING_FILE}.{point}")
    except FileNotFoundError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


def arm(arming_file: str, point: str) -> None:
    """Have the next process to reach `point` killed there (the fault suite's side)."""
    with open(f"{arming_file}.{point}", "w"):
        pass


def armed(arming_file: str, point: str) -> bool:
    """Whether `point` is still armed: no process has reached it yet."""
    return os.path.exists(f"{arming_file}.{point}")
