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
            breaks.append({"service": service, "position": len(prefix), "kind": "shrunk",
                           "detail": f"the checkpoint saw {point['position']} events"})
            continue
        if prefix and prefix[-1]["hash"] != point["hash"]:
            breaks.append({"service": service, "position": point["position"],
                           "kind": "head", "detail": "the head hash differs from the checkpoint"})
        if merkle_root(log_leaves(prefix)) != point["merkle_root"]:
            breaks.append({"service": service, "position": point["position"],
                           "kind": "merkle", "detail": "the log up to the checkpoint was "
                                                      "rewritten (Merkle root differs)"})
    return breaks


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


def state_as_of(events: list[dict], moment: datetime) -> dict[str, dict | None]:
    """Per service, the last event of the order at `moment` (what it knew then)."""
    state: dict[str, dict | None] = dict.fromkeys(SERVICES)
    for event in events:
        if parse_time(event["occurred_at"]) <= moment:
            state[event["source"]] = {"event_type": event["event_type"],
                                      "occurred_at": event["occurred_at"],
                                      "actor": event["actor"]}
    return state


# -- open loops -----------------------------------------------------------------------------

LINKS = ("created", "dispatched", "completed", "verified", "settled")


OUTCOMES = {"order_verified": "verified", "order_disputed": "disputed",
            "order_unverified": "unverified"}


def open_loops(logs: dict[str, list[dict]], now: datetime, *, since: datetime | None = None,
               partner: str | None = None) -> list[dict]:
    """Every order whose loop is not closed, the link that is missing, its age and SLA."""
    orders: dict[str, dict] = {}
    for event in logs.get("orders", []):
        p = event["payload"]
        if event["event_type"] == "order_created":
            orders[p["order_id"]] = {"order_id": p["order_id"], "order_type": p["order_type"],
                                     "created_at": event["occurred_at"], "cancelled": False,
                                     "routed_to": p["routed_to"], "partner_id": None,
                                     "dispatched": False, "visits": 0, "outcomes": {},
                                     "settled": False, "paid": False,
                                     "last_at": event["occurred_at"]}
        elif event["event_type"] == "order_cancelled" and p["order_id"] in orders:
            orders[p["order_id"]]["cancelled"] = True
    for event in logs.get("dispatch", []):
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
    # each log is read on its own, so callback's outcomes are matched to dispatch's visits by
    # their visit number (a task's, for an outcome that does not carry one), not by time
    visit_of_task: dict[str, int] = {}
    for event in logs.get("callback", []):
        p = event["payload"]
        order = orders.get(p.get("order_id", ""))
        if order is None or p.get("task_id", "").startswith("review-"):
            continue
        if event["event_type"] == "verification_task_created":
            visit_of_task[p["task_id"]] = p["visit"]
        elif event["event_type"] in OUTCOMES:
            visit = p.get("visit") or visit_of_task.get(p["task_id"], 1)
            order["outcomes"][visit] = OUTCOMES[event["event_type"]]
            order["last_at"] = max(order["last_at"], event["occurred_at"])
    for order in orders.values():
        visits = order["visits"]
        latest = order["outcomes"].get(visits)
        order.update(completed=visits > 0 and latest != "disputed",
                     disputed=latest == "disputed", verified=latest == "verified",
                     unverified=latest == "unverified")
    for event in logs.get("settlement", []):
        if event["event_type"] != "period_closed":
            continue
        for line in event["payload"]["lines"]:
            order = orders.get(line["order_id"])
            if order is None:
                continue
            # settled: paid in a closed period, or decided there for good with nothing owed
            # to the partner (the customer paid, or the claim was rejected); a line still
            # held and paying nothing is not settled yet
            order["settled"] |= line["payable_cents"] > 0 or line["held_cents"] == 0
            order["paid"] |= line["payable_cents"] > 0

    loops = []
    for order in orders.values():
        if order["cancelled"] or order["routed_to"] != "dispatch":
            continue
        if since and parse_time(order["created_at"]) < since:
            continue
        if partner and order["partner_id"] != partner:
            continue
        missing, sla = None, None
        if order["paid"] and not order["verified"]:
            missing, sla = "settled_without_verification", "must never happen"
        elif not order["dispatched"]:
            missing, sla = "never_dispatched", "assign at once"
        elif order["disputed"] and not order["completed"]:
            missing, sla = "disputed_never_revisited", "re-visit"
        elif not order["completed"]:
            missing, sla = "never_completed", "accept 2 h, schedule 24 h"
        elif not order["verified"]:
            missing = "unverified_held" if order["unverified"] else "never_verified"
            sla = "verify within 48 h"
        elif not order["settled"]:
            missing, sla = "never_settled", "next period's run"
        if missing:
            age = now - parse_time(order["last_at"])
            loops.append({"order_id": order["order_id"], "order_type": order["order_type"],
                          "partner_id": order["partner_id"], "missing": missing,
                          "since": order["last_at"],
                          "age_hours": round(age.total_seconds() / 3600, 1),
                          "sla": sla, "sla_broken": _broken(missing, age.total_seconds())})
    return sorted(loops, key=lambda loop: loop["since"])


def _broken(missing: str, age_seconds: float) -> bool:
    limits = {"never_dispatched": 300, "never_completed": 26 * 3600,
              "never_verified": 48 * 3600, "unverified_held": 0,
              "disputed_never_revisited": 26 * 3600, "never_settled": 62 * 86400,
              "settled_without_verification": 0}
    return age_seconds > limits.get(missing, 0)
