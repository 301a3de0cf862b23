"""Checkpoints (RFC 6962 Merkle tree hash): what a log was up to a position, and whether it
is still that."""

from __future__ import annotations

import hashlib

from serviceloop.eventstore import GENESIS_HASH


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
