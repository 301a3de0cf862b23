"""What auditors check, over the logs as the services' RPC hands them out (never their
databases): chains, positions, contracts, causation, RFC 6962 Merkle checkpoints, one order's
history across the four logs, and the loops that are still open."""

from __future__ import annotations

import gc
import hashlib
import json
import os
from collections.abc import Callable, Iterable
from datetime import datetime

from contracts.errors import ContractViolation
from contracts.registry import validate_event
from serviceloop.clock import parse_time
from serviceloop.config import SERVICES
from serviceloop.eventstore import GENESIS_HASH, Envelope

PAGE = 5000
# causation ids that name a command, not an event
COMMAND_PREFIXES = ("cmd-", "http-", "timer-", "run-", "req-", "test", "period-")


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


# -- verify ---------------------------------------------------------------------------------


PARALLEL_FROM = 100_000  # events: below this, one process verifies faster than several


def verify(logs: dict[str, list[dict]], workers: int | None = None) -> list[dict]:
    """Every break in every log: chain, positions, contracts, causation.

    Each log is cut into slices checked independently (a slice starts from the event
    before it, so the answer is the same as one pass); with `workers` > 1 (default: the
    CPUs, for logs of PARALLEL_FROM events or more) forked processes share the slices."""
    total = sum(len(log) for log in logs.values())
    if workers is None:
        workers = (os.cpu_count() or 1) if total >= PARALLEL_FROM else 1
    known_ids = frozenset(e["event_id"] for log in logs.values() for e in log)
    slices = []
    for service, log in logs.items():
        step = max(1, -(-len(log) // workers))
        slices += [(service, start, min(start + step, len(log)))
                   for start in range(0, len(log), step)]

    def check(share: list[int]) -> list[list[dict]]:
        return [_verify_slice(logs, known_ids, *slices[n]) for n in share]

    shares = [list(range(n, len(slices), workers)) for n in range(min(workers, len(slices)))]
    found: dict[int, list[dict]] = {}
    for share, answers in zip(shares, _in_processes(check, shares), strict=True):
        found.update(zip(share, answers, strict=True))
    return [b for n in range(len(slices)) for b in found[n]]


def _verify_slice(logs: dict[str, list[dict]], known_ids: frozenset, service: str,
                  start: int, end: int) -> list[dict]:
    log = logs[service]
    breaks: list[dict] = []
    if start:
        prev_hash, expected = log[start - 1]["hash"], log[start - 1]["global_position"] + 1
    else:
        prev_hash, expected = GENESIS_HASH, 1
    for body in log[start:end]:
        envelope = _envelope(body)
        at = envelope.global_position

        def report(kind: str, detail: str, at: int = at) -> None:
            breaks.append({"service": service, "position": at, "kind": kind, "detail": detail})

        if at != expected:  # named at the first position that is missing or out of place
            report("gap", f"expected position {expected}, found {at}", at=expected)
        if envelope.prev_hash != prev_hash:
            report("chain", "prev_hash is not the previous event's hash")
        if envelope.computed_hash() != envelope.hash:
            report("hash", "the hash does not match the event's content")
        try:
            validate_event(envelope.event_type, envelope.schema_version, body["payload"])
        except ContractViolation as error:
            report("contract", f"{envelope.event_type}: {error.fields}")
        cause = envelope.causation_id
        if cause not in known_ids and not cause.startswith(COMMAND_PREFIXES):
            report("causation", f"causation_id {cause} is no event in any log")
        prev_hash, expected = envelope.hash, at + 1
    return breaks


def _in_processes(work: Callable[[list], object], shares: list[list]) -> list:
    """`work(share)` for each share: the first here, the others in forked children (which
    see this process's memory as it is), their answers back as JSON through pipes."""
    children = []
    if len(shares) > 1:
        gc.freeze()  # the logs stay shared: no collector walks (and so copies) them in a child
    for share in shares[1:]:
        reader, writer = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: work, answer, leave without running anything else
            status = 1
            try:
                gc.disable()
                os.close(reader)
                with open(writer, "wb") as out:
                    out.write(json.dumps(work(share)).encode())
                status = 0
            finally:
                os._exit(status)
        os.close(writer)
        children.append((pid, reader))
    answers = [work(shares[0])] if shares else []
    for pid, reader in children:
        with open(reader, "rb") as handle:
            data = handle.read()
        _, status = os.waitpid(pid, 0)
        if status != 0:
            raise RuntimeError(f"a verifying process failed (status {status})")
        answers.append(json.loads(data))
    gc.unfreeze()
    return answers


def _envelope(body: dict) -> Envelope:
    if "payload_json" in body:  # as read_log hands it: the stored text, hashed as it is
        return Envelope(*(body[name] for name in Envelope._fields))
    return Envelope.from_dict(body)


# -- checkpoints (RFC 6962 Merkle tree hash) ------------------------------------------------


def merkle_root(leaves: list[bytes]) -> str:
    """MTH of RFC 6962 §2.1: leaf = SHA-256(0x00 || d), node = SHA-256(0x01 || l || r),
    split at the largest power of two smaller than n."""
    def mth(items: list[bytes]) -> bytes:
        if not items:
            return hashlib.sha256(b"").digest()
        if len(items) == 1:
            return hashlib.sha256(b"\x00" + items[0]).digest()
        k = 1 << ((len(items) - 1).bit_length() - 1)
        return hashlib.sha256(b"\x01" + mth(items[:k]) + mth(items[k:])).digest()

    return mth(leaves).hex()


def log_leaves(log: list[dict]) -> list[bytes]:
    return [bytes.fromhex(e["hash"]) for e in log]


def checkpoint(logs: dict[str, list[dict]], taken_at: str) -> dict:
    return {"taken_at": taken_at, "logs": {
        service: {"position": log[-1]["global_position"] if log else 0,
                  "hash": log[-1]["hash"] if log else GENESIS_HASH,
                  "merkle_root": merkle_root(log_leaves(log))}
        for service, log in logs.items()}}


def verify_against(logs: dict[str, list[dict]], saved: dict) -> list[dict]:
    """Everything up to each checkpoint unchanged, and the logs only grown since."""
    breaks = []
    for service, point in saved["logs"].items():
        log = logs.get(service, [])
        prefix = [e for e in log if e["global_position"] <= point["position"]]
        if len(prefix) < point["position"]:
            missing = _first_missing(prefix)
            end = log[-1]["global_position"] if log else 0
            detail = (f"position {missing} missing: the log shrank from {point['position']} "
                      f"to {end}" if end < point["position"] else
                      f"position {missing} missing: {len(prefix)} of the "
                      f"{point['position']} events the checkpoint saw are left")
            breaks.append({"service": service, "position": missing, "kind": "shrunk",
                           "detail": detail})
            continue
        if prefix and prefix[-1]["hash"] != point["hash"]:
            breaks.append({"service": service, "position": point["position"],
                           "kind": "head", "detail": "the head hash differs from the checkpoint"})
        if merkle_root(log_leaves(prefix)) != point["merkle_root"]:
            breaks.append({"service": service, "position": point["position"],
                           "kind": "merkle", "detail": "the log up to the checkpoint was "
                                                      "rewritten (Merkle root differs)"})
    return breaks


def _first_missing(prefix: list[dict]) -> int:
    """The first position 1, 2, 3 … not where it belongs in `prefix`."""
    for expected, body in enumerate(prefix, 1):
        if body["global_position"] != expected:
            return expected
    return len(prefix) + 1


# -- one order across the four logs ---------------------------------------------------------


def causal_order(events: Iterable[dict]) -> list[dict]:
    """Events in causal order: each after the event that caused it (`causation_id`) and after
    everything before it in its own service's log (log order is commit order); among events
    that are free to go, the earliest `occurred_at` first, then by service and position."""
    import heapq

    items = list(events)
    rank = {service: n for n, service in enumerate(SERVICES)}
    by_id = {e["event_id"]: n for n, e in enumerate(items)}
    after: dict[int, list[int]] = {n: [] for n in range(len(items))}
    waiting = [0] * len(items)

    def edge(first: int, then: int) -> None:
        after[first].append(then)
        waiting[then] += 1

    per_service: dict[str, list[int]] = {}
    for n, event in enumerate(items):
        per_service.setdefault(event["source"], []).append(n)
        cause = by_id.get(event["causation_id"])
        if cause is not None and cause != n:
            edge(cause, n)
    for indices in per_service.values():
        indices.sort(key=lambda n: items[n]["global_position"])
        for first, then in zip(indices, indices[1:], strict=False):
            edge(first, then)

    def key(n: int) -> tuple:
        e = items[n]
        return (e["occurred_at"], rank.get(e["source"], 99), e["global_position"], n)

    ready = [key(n) for n in range(len(items)) if waiting[n] == 0]
    heapq.heapify(ready)
    ordered, done = [], set()
    while ready:
        n = heapq.heappop(ready)[-1]
        ordered.append(items[n])
        done.add(n)
        for then in after[n]:
            waiting[then] -= 1
            if waiting[then] == 0:
                heapq.heappush(ready, key(then))
    # a causation cycle (impossible unless a log was forged) still lists every event
    ordered += sorted((items[n] for n in range(len(items)) if n not in done),
                      key=lambda e: (e["occurred_at"], e["global_position"]))
    return ordered


# callback's outcome events, and the outcome each records for the visit it verified
OUTCOMES = {"order_verified": "verified", "order_disputed": "disputed",
            "order_unverified": "unverified", "unverified_closed": "closed_unverified"}


# -- one order's state in each service, as of a moment --------------------------------------
# Each service's state is a fold of its own events for the order, read the way that service's
# read models read them (services/*/projections.py), so `--as-of` shows what each service held.


def _orders_step(state: dict, kind: str, p: dict) -> None:
    if kind == "order_created":
        state.update(status=p["status"], order_type=p["order_type"], routed_to=p["routed_to"],
                     fault_code=p["fault_code"], in_warranty=p["in_warranty"], partner_id=None)
    elif kind == "order_fault_recorded":
        state.update(status=p["status"], fault_code=p["fault_code"])
    elif kind == "order_cancelled":
        state.update(status="cancelled", cancel_reason=p["reason"])
    elif kind == "order_progressed":
        state.update({k: p[k] for k in ("status", "partner_id", "window_start", "window_end")})
    elif kind == "order_verification_recorded":
        state.update(status=p["status"], verification=p["outcome"])
    elif kind == "order_settled":
        state.update(status="closed", settled_period=p["period"], paid_cents=p["payable_cents"])


def _dispatch_step(state: dict, kind: str, p: dict) -> None:
    free = dict(partner_id=None, window_start=None, window_end=None)  # nobody holds it
    if kind == "order_received":
        state.update(status=p["status"], fault_code=p["fault_code"], attempt=0, visits=0,
                     excluded=[], **free)
    elif kind == "fault_code_received":
        state.update(status="ready", fault_code=p["fault_code"])
    elif kind == "order_assigned":
        state.update(free, status="assigned", partner_id=p["partner_id"], attempt=p["attempt"],
                     accept_by=p["accept_by"])
    elif kind == "order_accepted":
        state.update(status="accepted", schedule_by=p["schedule_by"])
    elif kind in ("order_rejected", "assignment_timed_out", "sla_breached"):
        state.update(free, status="ready", ended_by=kind,
                     excluded=sorted({*state.get("excluded", []), p["partner_id"]}))
    elif kind == "order_escalated":
        state.update(free, status="escalated", escalation=p["reason"])
    elif kind == "appointment_scheduled":
        state.update(status="scheduled", window_start=p["window_start"],
                     window_end=p["window_end"])
    elif kind == "appointment_cancelled":
        state.update(status="accepted", window_start=None, window_end=None)
    elif kind == "partner_arrived":
        state.update(status="on_site", within_window=p["within_window"])
    elif kind == "order_completed":
        state.update(status="completed", visits=state.get("visits", 0) + 1,
                     labour_fee_cents=p["labour_fee_cents"],
                     travel_fee_cents=p["travel_fee_cents"],
                     parts_fee_cents=p["parts_fee_cents"],
                     parts=[part["part_code"] for part in p["parts"]])
    elif kind == "order_reopened":
        state.update(free, status="ready", reopened_for=p["reasons"])
    elif kind == "order_withdrawn":
        state.update(status="withdrawn")


_TASK_STATUS = {"task_leased": "leased", "confirmation_requested": "awaiting_reply",
                "callback_unanswered": "open", "order_verified": "verified",
                "order_disputed": "disputed", "order_unverified": "unverified",
                "unverified_closed": "closed", "task_returned": "open"}


def _callback_step(state: dict, kind: str, p: dict) -> None:
    """The order's current verification task (the latest visit's; a sampled review of an
    automatic verification is counted, not shown in its place)."""
    if kind == "verification_task_created":
        if p["review_of"]:
            state["reviews"] = state.get("reviews", 0) + 1
            return
        state.update(task_id=p["task_id"], visit=p["visit"], channel=p["channel"],
                     due_at=p["due_at"], task_status="open", outcome=None, attempts=0)
        return
    if p["task_id"] != state.get("task_id") or kind not in _TASK_STATUS:
        return
    state["task_status"] = _TASK_STATUS[kind]
    if kind in OUTCOMES:
        state["outcome"] = OUTCOMES[kind]
        state["satisfaction"] = p.get("satisfaction")
    if kind == "order_disputed":
        state["dispute_reasons"] = p["reasons"]
    if kind in ("confirmation_requested", "callback_unanswered"):
        state["attempts"] = p["attempt"]
    elif kind == "order_unverified":
        state["attempts"] = p["attempts"]
    elif kind == "task_returned":
        state.update(attempts=0, outcome=None)


def _settlement_step(state: dict, kind: str, p: dict) -> None:
    """The order's latest claim (one per completion) as last decided."""
    if kind == "order_facts_recorded":
        state["facts_recorded"] = True
    elif kind == "sla_breach_recorded":
        state["sla_breaches"] = state.get("sla_breaches", 0) + 1
    elif kind == "claim_decided":
        lines = p["lines"]
        state.update(claim_id=p["claim_id"], callback=p["callback"],
                     decisions={line["line_id"]: line["decision"] for line in lines},
                     claimed_cents=sum(line["claimed_cents"] for line in lines),
                     approved_cents=sum(line["approved_cents"] for line in lines),
                     held_cents=sum(line["claimed_cents"] for line in lines
                                    if line["decision"] == "held"))


FOLDS = {"orders": _orders_step, "dispatch": _dispatch_step, "callback": _callback_step,
         "settlement": _settlement_step}


def fold_service(service: str, events: Iterable[dict]) -> dict | None:
    """One service's state of the order after `events` (that service's, in log order); None
    when it has none. Plain dicts: what a person or `--json` reads."""
    state: dict | None = None
    for event in events:
        if state is None:
            state = {"order_id": event["correlation_id"], "events": 0}
        FOLDS[service](state, event["event_type"], event["payload"])
        state.update(events=state["events"] + 1, last_event=event["event_type"],
                     last_at=event["occurred_at"], position=event["global_position"],
                     actor=event["actor"])
    return state


def state_as_of(events: Iterable[dict], moment: datetime) -> dict[str, dict | None]:
    """Per service, the order's state as that service held it at `moment`: the fold of its
    events that had occurred by then (each tagged with its `source`), in its log order."""
    mine: dict[str, list[dict]] = {service: [] for service in SERVICES}
    for event in events:
        if parse_time(event["occurred_at"]) <= moment:
            mine.setdefault(event["source"], []).append(event)
    return {service: fold_service(service, sorted(log, key=lambda e: e["global_position"]))
            if service in FOLDS else None for service, log in mine.items()}


# -- open loops -----------------------------------------------------------------------------

# each missing link: the SLA it breaks, and after how many seconds it is broken
SLAS = {
    "never_dispatched": ("assign at once", 300),
    "never_completed": ("accept 2 h, schedule 24 h", 26 * 3600),
    "disputed_never_revisited": ("re-visit", 26 * 3600),
    "never_verified": ("verify within 48 h", 48 * 3600),
    "unverified_held": ("verify within 48 h", 0),
    "never_settled": ("next period's run", 62 * 86400),
    # orders closes a paid order as soon as it reads the period's close: minutes, not hours
    "settled_not_closed_in_orders": ("orders closes it at the period's close", 3600),
    "closed_unverified_not_closed_in_orders": ("orders closes it with the task", 3600),
    "settled_without_verification": ("must never happen", 0),
}
CLOSED_IN_ORDERS_BUT = "closed_in_orders_but_"  # + the link the other logs say is missing


def open_loops(logs: dict[str, list[dict]], now: datetime, *, since: datetime | None = None,
               partner: str | None = None) -> list[dict]:
    """Every order whose loop is not closed, the link that is missing, its age at `now` (the
    services' time, never the auditor's wall clock) and the SLA it breaks.

    A loop is closed when orders has closed the order and dispatch, callback and settlement
    agree: completed, verified (or closed unverified by a supervisor) and settled. Orders
    closes an order when a closed period settles it, paid or decided for good with nothing
    payable (customer-paid, rejected)."""
    orders = _orders_from_their_log(logs.get("orders", []))
    _follow_dispatch(orders, logs.get("dispatch", []))
    _follow_callback(orders, logs.get("callback", []))
    _follow_settlement(orders, logs.get("settlement", []))
    loops = []
    for order in orders.values():
        if order["cancelled"] or order["routed_to"] != "dispatch":
            continue
        if since and parse_time(order["created_at"]) < since:
            continue
        if partner and order["partner_id"] != partner:
            continue
        missing = _missing_link(order)
        if missing:
            age = now - parse_time(order["last_at"])
            sla, limit = SLAS.get(missing, ("must never happen", 0))
            loops.append({"order_id": order["order_id"], "order_type": order["order_type"],
                          "partner_id": order["partner_id"], "missing": missing,
                          "since": order["last_at"],
                          "age_hours": round(age.total_seconds() / 3600, 1),
                          "sla": sla, "sla_broken": age.total_seconds() > limit})
    return sorted(loops, key=lambda loop: loop["since"])


def _missing_link(order: dict) -> str | None:
    """The first link missing in the order's loop, or None when the loop is closed."""
    latest = order["outcomes"].get(order["visits"])
    completed = order["visits"] > 0 and latest != "disputed"
    if order["paid"] and latest != "verified":
        return "settled_without_verification"
    if not order["dispatched"]:
        missing = "never_dispatched"
    elif latest == "disputed":
        missing = "disputed_never_revisited"
    elif not completed:
        missing = "never_completed"
    elif latest == "closed_unverified":  # a supervisor closed it unverified: nothing is paid
        missing = None
    elif latest != "verified":
        missing = "unverified_held" if latest == "unverified" else "never_verified"
    elif not order["settled"]:
        missing = "never_settled"
    else:
        missing = None
    if missing:  # orders closed what another log says is still open
        return CLOSED_IN_ORDERS_BUT + missing if order["closed_in_orders"] else missing
    if order["closed_in_orders"]:
        return None
    if latest == "closed_unverified":
        return "closed_unverified_not_closed_in_orders"
    return "settled_not_closed_in_orders"


def _orders_from_their_log(log: list[dict]) -> dict[str, dict]:
    orders: dict[str, dict] = {}
    for event in log:
        p, kind = event["payload"], event["event_type"]
        if kind == "order_created":
            orders[p["order_id"]] = {"order_id": p["order_id"], "order_type": p["order_type"],
                                     "created_at": event["occurred_at"], "cancelled": False,
                                     "routed_to": p["routed_to"], "partner_id": None,
                                     "dispatched": False, "visits": 0, "outcomes": {},
                                     "settled": False, "paid": False,
                                     "closed_in_orders": False,
                                     "last_at": event["occurred_at"]}
            continue
        order = orders.get(p.get("order_id", ""))
        if order is None:
            continue
        if kind == "order_cancelled":
            order["cancelled"] = True
        elif kind == "order_settled" or (kind == "order_verification_recorded"
                                         and p["status"] == "closed"):
            order["closed_in_orders"] = True  # as orders' own read model closes it
    return orders


def _follow_dispatch(orders: dict[str, dict], log: list[dict]) -> None:
    for event in log:
        order = orders.get(event["payload"].get("order_id", ""))
        if order is None:
            continue
        kind = event["event_type"]
        if kind == "order_assigned":
            order.update(dispatched=True, partner_id=event["payload"]["partner_id"])
        elif kind == "order_completed":
            order["visits"] += 1
            order["last_at"] = max(order["last_at"], event["occurred_at"])
        elif kind == "order_withdrawn":
            order["cancelled"] = True


def _follow_callback(orders: dict[str, dict], log: list[dict]) -> None:
    """Each log is read on its own, so callback's outcomes are matched to dispatch's visits by
    their visit number (a task's, for an outcome that does not carry one), not by time."""
    visit_of_task: dict[str, int] = {}
    for event in log:
        p, kind = event["payload"], event["event_type"]
        order = orders.get(p.get("order_id", ""))
        if order is None or p.get("task_id", "").startswith("review-"):
            continue
        if kind == "verification_task_created":
            visit_of_task[p["task_id"]] = p["visit"]
        elif kind in OUTCOMES or kind == "task_returned":
            visit = p.get("visit") or visit_of_task.get(p["task_id"], 1)
            order["outcomes"][visit] = OUTCOMES.get(kind)  # sent back: no outcome yet
            order["last_at"] = max(order["last_at"], event["occurred_at"])


def _follow_settlement(orders: dict[str, dict], log: list[dict]) -> None:
    for event in log:
        if event["event_type"] != "period_closed":
            continue
        for line in event["payload"]["lines"]:
            order = orders.get(line["order_id"])
            if order is None:
                continue
            # settled: paid in a closed period, or decided there for good with nothing owed
            # to the partner (the customer paid, or the claim was rejected); a line still
            # held and paying nothing is not settled yet
            settles = line["payable_cents"] > 0 or line["held_cents"] == 0
            order["settled"] |= settles
            order["paid"] |= line["payable_cents"] > 0
            if settles:
                order["last_at"] = max(order["last_at"], event["occurred_at"])


def loops_now(logs: dict[str, list[dict]], clock_now: datetime,
              given: datetime | None = None) -> tuple[datetime, str]:
    """The moment open loops are aged at, and where it came from: `given` (an auditor's
    `--now`) if any, else the services' clock, but never before the newest event in the
    logs (a clock behind the services' would age loops negatively)."""
    if given is not None:
        return given, "--now"
    newest = max((log[-1]["occurred_at"] for log in logs.values() if log), default=None)
    if newest is not None and parse_time(newest) > clock_now:
        return parse_time(newest), "the newest event (the services' clock reads earlier)"
    return clock_now, "the services' clock"


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
