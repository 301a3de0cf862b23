"""What auditors check, over the logs as the services' RPC hands them out (never their
databases): chains, positions, contracts, causation, RFC 6962 Merkle checkpoints, one order's
history across the four logs, and the loops that are still open."""

from serviceloop.audit.replay import (
    CLOSED_IN_ORDERS_BUT,
    COMMAND_PREFIXES,
    FOLDS,
    OUTCOMES,
    PAGE,
    PARALLEL_FROM,
    SLAS,
    causal_order,
    checkpoint,
    fold_service,
    log_leaves,
    loops_now,
    merkle_root,
    open_loops,
    progress_bar,
    read_log,
    read_logs,
    state_as_of,
    verify,
    verify_against,
)

__all__ = [
    "CLOSED_IN_ORDERS_BUT", "COMMAND_PREFIXES", "FOLDS", "OUTCOMES", "PAGE", "PARALLEL_FROM",
    "SLAS", "causal_order", "checkpoint", "fold_service", "log_leaves", "loops_now",
    "merkle_root", "open_loops", "progress_bar", "read_log", "read_logs", "state_as_of",
    "verify", "verify_against",
]
