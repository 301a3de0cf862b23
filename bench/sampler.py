"""A small statistical profiler that works under eventlet (cProfile does not, across switches).

SIGPROF fires every `interval` seconds of CPU time; the handler gets the frame that was
running (whichever green thread it belongs to) and counts its whole stack.
"""

from __future__ import annotations

import collections
import signal
from pathlib import Path
from types import FrameType

_ROOT = str(Path(__file__).resolve().parent.parent)


def _label(frame: FrameType) -> str:
    path = frame.f_code.co_filename
    if path.startswith(_ROOT) and "/.venv/" not in path:
        path = path[len(_ROOT) + 1:]
    elif "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif "/lib/python3" in path:
        path = "stdlib/" + path.rsplit("/lib/python3", 1)[1].split("/", 1)[1]
    return f"{path}:{frame.f_code.co_name}"


def _package(label: str) -> str:
    path = label.split(":", 1)[0]
    top = path.split("/", 1)[0]
    if top in ("stdlib",):
        return "stdlib/" + path.split("/")[1].removesuffix(".py")
    return top.removesuffix(".py")


class Sampler:
    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.samples = 0
        self.self_counts: collections.Counter[str] = collections.Counter()
        self.inclusive: collections.Counter[str] = collections.Counter()
        self.packages: collections.Counter[str] = collections.Counter()

    def _handle(self, _signum: int, frame: FrameType | None) -> None:
        if frame is None:
            return
        self.samples += 1
        self.self_counts[_label(frame)] += 1
        self.packages[_package(_label(frame))] += 1
        seen = set()
        while frame is not None:
            label = _label(frame)
            if label not in seen:
                seen.add(label)
                self.inclusive[label] += 1
            frame = frame.f_back

    def __enter__(self) -> Sampler:
        signal.signal(signal.SIGPROF, self._handle)
        signal.setitimer(signal.ITIMER_PROF, self.interval, self.interval)
        return self

    def __exit__(self, *_: object) -> None:
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        signal.signal(signal.SIGPROF, signal.SIG_DFL)

    def report(self, top: int = 25, inclusive_filter: tuple[str, ...] = (),
               cpu_ms_per_call: float | None = None) -> str:
        """Shares of CPU samples; with `cpu_ms_per_call`, also in ms of CPU per call."""
        total = max(self.samples, 1)

        def line(name: str, n: int) -> str:
            ms = f"{n / total * cpu_ms_per_call:6.2f} ms  " if cpu_ms_per_call else ""
            return f"  {n / total:6.1%}  {ms}{name}"

        lines = [f"{self.samples} samples (SIGPROF every {self.interval * 1000:.1f} ms of CPU)",
                 "", "self time by package:"]
        lines += [line(name, n) for name, n in self.packages.most_common(top)]
        lines += ["", "self time by function:"]
        lines += [line(name, n) for name, n in self.self_counts.most_common(top)]
        lines += ["", "inclusive time (on the stack), project code and selected libraries:"]
        chosen = [(name, n) for name, n in self.inclusive.most_common()
                  if not inclusive_filter or name.startswith(inclusive_filter)]
        lines += [line(name, n) for name, n in chosen[:top * 2]]
        return "\n".join(lines)
