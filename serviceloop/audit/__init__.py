"""What auditors check, over the logs as the services' RPC hands them out (never their
databases): chains, positions, contracts, causation, RFC 6962 Merkle checkpoints, one order's
history across the four logs, and the loops that are still open."""

from serviceloop.audit.checkpoint import checkpoint, log_leaves, merkle_root, verify_against
from serviceloop.audit.loops import (
    CLOSED_IN_ORDERS_BUT,
    LOOP_EVENT_TYPES,
    SLAS,
    loops_now,
    open_loops,
)
from serviceloop.audit.read import PAGE, progress_bar, read_log, read_logs, read_pages
from serviceloop.audit.replay import FOLDS, OUTCOMES, causal_order, fold_service, state_as_of
from serviceloop.audit.stream import Verified, verify_over_rpc
from serviceloop.audit.verify import COMMAND_PREFIXES, PARALLEL_FROM, verify

__all__ = [
    "CLOSED_IN_ORDERS_BUT", "COMMAND_PREFIXES", "FOLDS", "LOOP_EVENT_TYPES", "OUTCOMES", "PAGE",
    "PARALLEL_FROM",
    "SLAS", "Verified", "causal_order", "checkpoint", "fold_service", "log_leaves", "loops_now",
    "merkle_root", "open_loops", "progress_bar", "read_log", "read_logs", "read_pages",
    "state_as_of", "verify", "verify_against", "verify_over_rpc",
]
