"""A producer away while a consumer's catch-up passes run every two seconds: one warning when
it goes, one every REPEAT_WARNING_S while it stays away, an info line when it answers again."""

from __future__ import annotations

import logging

from serviceloop.catchup import ProducerTrouble


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lines(caplog) -> list[tuple[str, str]]:  # noqa: ANN001
    return [(r.levelname, r.getMessage()) for r in caplog.records
            if r.name == "serviceloop.catchup"]


def test_a_producer_away_is_one_warning_then_one_every_few_minutes_then_an_info(caplog):
    caplog.set_level(logging.INFO, logger="serviceloop.catchup")
    clock = Clock()
    trouble = ProducerTrouble(clock)
    away = ConnectionError("Unknown service `dispatch`")
    for _ in range(100):  # 200 s of passes
        trouble.failed("orders", "dispatch", away)
        clock.now += 2
    assert lines(caplog) == [("WARNING", "orders could not catch up with dispatch (1 pass "
                                         "failed): Unknown service `dispatch`")]
    clock.now += ProducerTrouble.REPEAT_WARNING_S
    trouble.failed("orders", "dispatch", away)
    trouble.answered("orders", "callback")  # another producer, never away: nothing to say
    assert lines(caplog)[1:] == [("WARNING", "orders could not catch up with dispatch (101 "
                                             "passes failed): Unknown service `dispatch`")]
    trouble.answered("orders", "dispatch")
    trouble.answered("orders", "dispatch")  # said once
    assert lines(caplog)[2:] == [("INFO", "orders catches up with dispatch again, after 101 "
                                          "failed passes")]
    trouble.failed("orders", "dispatch", away)  # away again: a warning at once
    assert lines(caplog)[3][0] == "WARNING" and "(1 pass failed)" in lines(caplog)[3][1]
