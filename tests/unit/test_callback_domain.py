"""Who may take a verification task: the rule that keeps two agents off one visit."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from contracts.errors import Conflict
from services.callback import domain

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
SETTINGS = domain.Settings()
OPEN = domain.Task("t-1", "o-1", "p-1", "repair", "agent", "open", 1, 0, None, None,
                   {"parts": []}, None, 1)


def test_an_open_task_is_leased_until_the_lease_runs_out():
    event = domain.lease(OPEN, "a-1", NOW, SETTINGS)
    assert event.event_type == "task_leased"
    assert event.payload["agent_id"] == "a-1"
    assert event.payload["lease_until"] == "2026-11-23T10:15:00.000000Z"


def test_a_task_whose_lease_ran_out_can_be_taken_by_another_agent():
    held = replace(OPEN, status="leased", leased_by="a-1", lease_until=NOW - timedelta(seconds=1))
    assert domain.lease(held, "a-2", NOW, SETTINGS).payload["agent_id"] == "a-2"


@pytest.mark.parametrize("taken", [
    {"status": "leased", "leased_by": "a-1", "lease_until": NOW + timedelta(minutes=5)},
    {"status": "verified"},
    {"status": "disputed"},
    {"status": "unverified"},
    {"status": "awaiting_reply", "channel": "sms"},
])
def test_a_task_taken_or_finished_meanwhile_is_refused(taken):
    # the agent picked it from a list read a moment before another agent took or verified it
    with pytest.raises(Conflict) as refused:
        domain.lease(replace(OPEN, **taken), "a-2", NOW, SETTINGS)
    assert refused.value.code == "task_taken"
