"""Every break in every log: chain, positions, contracts, causation."""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Callable

from contracts.errors import ContractViolation
from contracts.registry import validate_event
from serviceloop.eventstore import GENESIS_HASH, Envelope

# causation ids that name a command, not an event
COMMAND_PREFIXES = ("cmd-", "http-", "timer-", "run-", "req-", "test", "period-")

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
        breaks += event_breaks(service, envelope, body["payload"], expected, prev_hash)
        cause = envelope.causation_id
        if cause not in known_ids and not cause.startswith(COMMAND_PREFIXES):
            breaks.append(causation_break(service, envelope.global_position, cause))
        prev_hash, expected = envelope.hash, envelope.global_position + 1
    return breaks


NOT_JSON = object()  # a payload whose stored text does not decode


def event_breaks(service: str, envelope: Envelope, payload: object, expected: int,
                 prev_hash: str) -> list[dict]:
    """One event's breaks but causation, in this order: gap, chain, hash, contract. `expected`
    and `prev_hash`: the position and hash the event before it leads one to expect."""
    at = envelope.global_position
    breaks = []

    def report(kind: str, detail: str, at: int = at) -> None:
        breaks.append({"service": service, "position": at, "kind": kind, "detail": detail})

    if at != expected:  # named at the first position that is missing or out of place
        report("gap", f"expected position {expected}, found {at}", at=expected)
    if envelope.prev_hash != prev_hash:
        report("chain", "prev_hash is not the previous event's hash")
    if envelope.computed_hash() != envelope.hash:
        report("hash", "the hash does not match the event's content")
    if payload is NOT_JSON:
        report("contract", f"{envelope.event_type}: the payload is not JSON")
    else:
        try:
            validate_event(envelope.event_type, envelope.schema_version, payload)
        except ContractViolation as error:
            report("contract", f"{envelope.event_type}: {error.fields}")
    return breaks


def causation_break(service: str, at: int, cause: str) -> dict:
    return {"service": service, "position": at, "kind": "causation",
            "detail": f"causation_id {cause} is no event in any log"}


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
