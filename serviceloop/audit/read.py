"""Reading the logs through the services' RPC (`events_since`), as auditors see them, and
the progress bar shown while they are read."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

PAGE = 5000


def read_log(rpc, service: str, progress: Callable[[str, int], None] | None = None,  # noqa: ANN001
             until: int | None = None) -> list[dict]:
    """A service's whole log (or up to position `until`) through its events_since."""
    return read_logs(rpc, [service], progress, {service: until} if until else None)[service]


def read_logs(rpc, services: Iterable[str],  # noqa: ANN001
              progress: Callable[[str, int], None] | None = None,
              until: dict[str, int] | None = None) -> dict[str, list[dict]]:
    """Several services' whole logs (or each up to `until[service]`), read side by side.

    Every service always has its next page asked for: it reads that page while this side
    decodes the pages already here, and the services read in parallel."""
    logs: dict[str, list[dict]] = {service: [] for service in services}
    limit = until or {}
    pending = {service: getattr(rpc, service).events_since.call_async(0, PAGE, True)
               for service in logs}  # payloads as hashed: no re-encoding either side
    while pending:
        for service, reply in list(pending.items()):
            page = reply.result()
            last = limit.get(service)
            if last is not None:
                page = [e for e in page if e["global_position"] <= last]
            if len(page) == PAGE and (last is None or page[-1]["global_position"] < last):
                pending[service] = getattr(rpc, service).events_since.call_async(
                    page[-1]["global_position"], PAGE, True)
            else:
                del pending[service]
            for body in page:
                body["payload"] = json.loads(body["payload_json"])
            logs[service].extend(page)
            if progress:
                progress(service, len(logs[service]))
    return logs


# -- progress -------------------------------------------------------------------------------


def progress_bar(label: str, done: int, total: int, width: int = 24) -> str:
    """`orders      [############············]    1,200/2,400   50%`: how much of a log has
    been read, against its head position when reading began (a log that grew since counts
    as its new length)."""
    total = max(total, done)
    share = done / total if total else 1.0
    filled = int(share * width)
    return (f"{label:<11} [{'#' * filled}{'·' * (width - filled)}] "
            f"{done:>9,}/{total:<9,} {int(share * 100):>3}%")
