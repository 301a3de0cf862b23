"""Reading the logs through the services' RPC (`events_since`), as auditors see them, and
the progress bar shown while they are read."""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Iterable, Iterator

from serviceloop.audit.wire import FIELDS, unpack_page

PAGE = 10_000  # events per call: the most events_since hands out (MAX_EVENTS_PER_CALL)
_POSITION, _TYPE = FIELDS.index("global_position"), FIELDS.index("event_type")


def read_log(rpc, service: str, progress: Callable[[str, int], None] | None = None,  # noqa: ANN001
             until: int | None = None) -> list[dict]:
    """A service's whole log (or up to position `until`) through its events_since."""
    return read_logs(rpc, [service], progress, {service: until} if until else None)[service]


def read_logs(rpc, services: Iterable[str],  # noqa: ANN001
              progress: Callable[[str, int], None] | None = None,
              until: dict[str, int] | None = None,
              event_types: set[str] | None = None) -> dict[str, list[dict]]:
    """Several services' whole logs (or each up to `until[service]`), read side by side: each
    event a dict of its fields, `payload_json` as stored and hashed, `payload` decoded.

    `event_types`: keep only events of these types, and each log's last event (its newest
    moment) whatever its type: for a reader such as `audit loops` that looks at a few kinds."""
    logs: dict[str, list[dict]] = {service: [] for service in services}
    read = dict.fromkeys(logs, 0)
    newest: dict[str, dict] = {}
    limit = until or {}
    collecting = gc.isenabled()
    gc.disable()  # a million dicts that all live on: no collector passes over them meanwhile
    try:
        for service, packed in read_pages(rpc, logs, until):
            log = logs[service]
            page = unpack_page(packed)
            last = limit.get(service)
            for row in zip(*(page[name] for name in FIELDS), strict=True):
                if last is not None and row[_POSITION] > last:
                    continue
                read[service] += 1
                if event_types is not None and row[_TYPE] not in event_types:
                    newest[service] = row
                    continue
                newest.pop(service, None)
                body = dict(zip(FIELDS, row, strict=True))
                body["payload"] = json.loads(body["payload_json"])
                log.append(body)
            if progress:
                progress(service, read[service])
    finally:
        if collecting:
            gc.enable()
    for service, row in newest.items():  # a last event of a kind not asked for
        body = dict(zip(FIELDS, row, strict=True))
        body["payload"] = json.loads(body["payload_json"])
        logs[service].append(body)
    return logs


def read_pages(rpc, services: Iterable[str],  # noqa: ANN001
               until: dict[str, int] | None = None) -> Iterator[tuple[str, dict]]:
    """Each service's log (or as far as `until[service]` and perhaps a little further), page by
    page as the pages arrive: `(service, page)`, a page as events_since packs it
    (serviceloop/audit/wire.py).

    Every service always has its next page asked for before this one is handed on, so each
    service reads while the caller works on what is here, and the services read in parallel."""
    limit = until or {}
    pending = {service: _ask(rpc, service, 0) for service in services}
    while pending:
        for service, reply in list(pending.items()):
            page = reply.result()
            positions = page["columns"]["global_position"]
            last = limit.get(service)
            if len(positions) == PAGE and (last is None or positions[-1] < last):
                pending[service] = _ask(rpc, service, positions[-1])
            else:
                del pending[service]
            yield service, page


def _ask(rpc, service: str, position: int):  # noqa: ANN001, ANN202
    return getattr(rpc, service).events_since.call_async(position, PAGE, packed=True)


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
