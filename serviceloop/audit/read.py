"""Reading the logs through the services' RPC (`events_since`), as auditors see them, and
the progress bar shown while they are read."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator

from serviceloop.audit.wire import FIELDS, collector_paused, unpack_page

PAGE = 10_000  # events per call: the most events_since hands out (MAX_EVENTS_PER_CALL)
_POSITION = FIELDS.index("global_position")


def read_log(rpc, service: str, progress: Callable[[str, int], None] | None = None,  # noqa: ANN001
             until: int | None = None) -> list[dict]:
    """A service's whole log (or up to position `until`) through its events_since."""
    return read_logs(rpc, [service], progress, {service: until} if until else None)[service]


def read_logs(rpc, services: Iterable[str],  # noqa: ANN001
              progress: Callable[[str, int], None] | None = None,
              until: dict[str, int] | None = None,
              event_types: Iterable[str] | None = None) -> dict[str, list[dict]]:
    """Several services' whole logs (or each up to `until[service]`), read side by side: each
    event a dict of its fields, `payload_json` as stored and hashed, `payload` decoded.

    `event_types`: only events of these types, chosen by the services (the others are never
    sent), and each log's last event (its newest moment) whatever its type: for a reader such
    as `audit loops` that looks at a few kinds. Progress is then told as the position read
    up to, not the events kept."""
    logs: dict[str, list[dict]] = {service: [] for service in services}
    kinds = None if event_types is None else sorted(event_types)
    limit = dict(until or {})
    if kinds is not None:  # where each log ends now: its last event is read on its own
        for service in logs:
            head = getattr(rpc, service).log_head()["position"]
            limit[service] = min(limit.get(service, head), head)
    read = dict.fromkeys(logs, 0)
    with collector_paused():  # a million dicts that all live on
        for service, packed in read_pages(rpc, logs, limit, kinds):
            log = logs[service]
            page = unpack_page(packed)
            last = limit.get(service)
            for row in zip(*(page[name] for name in FIELDS), strict=True):
                if last is not None and row[_POSITION] > last:
                    continue
                read[service] = row[_POSITION] if kinds is not None else read[service] + 1
                log.append(_body(row))
            if progress:
                progress(service, limit[service] if kinds is not None and
                         packed["count"] < PAGE else read[service])
        if kinds is not None:
            for service, log in logs.items():
                _add_newest(rpc, service, log, limit[service])
    return logs


def _body(row: tuple) -> dict:
    body = dict(zip(FIELDS, row, strict=True))
    body["payload"] = _decoded(body["payload_json"])
    return body


_scan = json.JSONDecoder().scan_once  # the C scanner itself


def _decoded(text: str) -> object:
    """`json.loads(text)`, straight from the C scanner when the text is canonical JSON (no
    whitespace around it, as stored): loads' Python layers cost as much as the scan."""
    try:
        value, end = _scan(text, 0)
    except StopIteration:
        return json.loads(text)  # what loads says of it: an error, or a value after spaces
    return value if end == len(text) else json.loads(text)


def _add_newest(rpc, service: str, log: list[dict], position: int) -> None:  # noqa: ANN001
    """The log's event at `position` (its newest), if it is not the last one read already."""
    if position < 1 or (log and log[-1]["global_position"] >= position):
        return
    page = unpack_page(getattr(rpc, service).events_since(position - 1, 1, packed=True))
    log += [_body(row) for row in zip(*(page[name] for name in FIELDS), strict=True)
            if row[_POSITION] == position]


def read_pages(rpc, services: Iterable[str],  # noqa: ANN001
               until: dict[str, int] | None = None,
               event_types: list[str] | None = None) -> Iterator[tuple[str, dict]]:
    """Each service's log (or as far as `until[service]` and perhaps a little further), page by
    page as the pages arrive: `(service, page)`, a page as events_since packs it
    (serviceloop/audit/wire.py); only events of `event_types` if given.

    Every service always has its next page asked for before this one is handed on, so each
    service reads while the caller works on what is here, and the services read in parallel."""
    limit = until or {}
    pending = {service: _ask(rpc, service, 0, event_types) for service in services}
    while pending:
        for service, reply in list(pending.items()):
            page = reply.result()
            last = limit.get(service)
            if page["count"] == PAGE and (last is None or page["last"] < last):
                pending[service] = _ask(rpc, service, page["last"], event_types)
            else:
                del pending[service]
            yield service, page


def _ask(rpc, service: str, position: int, event_types: list[str] | None):  # noqa: ANN001, ANN202
    if event_types is None:
        return getattr(rpc, service).events_since.call_async(position, PAGE, packed=True)
    return getattr(rpc, service).events_since.call_async(position, PAGE, packed=True,
                                                         event_types=event_types)


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
