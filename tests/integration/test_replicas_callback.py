"""Two replicas of callback on one database and one broker, each with its own timer.

Real processes (`nameko run`) on PostgreSQL and RabbitMQ quorum queues, as a cluster runs
them, with orders and dispatch to complete the visits and the stand-in SMS provider (slow,
as real ones are) counting every request it gets. Both replicas' timers, and passes asked
for at once, race for every task; each confirmation must be requested from the provider
once, and each timer action (a reply overdue, the last attempt, a lease run out) happen once.
"""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta

import pytest
import requests
from nameko.standalone.rpc import ClusterRpcProxy

from serviceloop.clock import OffsetFileClock
from serviceloop.migrate import declare_broker_topology
from serviceloop.standin_provider import StandInProvider
from tests.helpers import wait_until
from tests.integration.dispatch_system import DispatchSystem
from tests.integration.replicas import Replicas, whole_log
from tests.integration.test_callback import complete_visit, one_task

REPLY_WITHIN = timedelta(minutes=720)  # config.yaml's default
RETRIES = (60, 180)  # minutes, CALLBACK_RETRY_MINUTES below
CALLBACKS = ("callback-a", "callback-b")


@pytest.fixture
def provider():
    standin = StandInProvider(delay=0.2).start()
    yield standin
    standin.stop()


@pytest.fixture
def replicas(tmp_path, quorum_vhost, database_for, provider):
    declare_broker_topology(quorum_vhost)
    system = Replicas(
        quorum_vhost, tmp_path / "clock-offset",
        **{f"DATABASE_URL_{s.upper()}": database_for(s, "postgres")
           for s in ("orders", "dispatch", "callback")},
        CALLBACK_TIMER_INTERVAL="0.3", CALLBACK_RETRY_MINUTES=",".join(str(m) for m in RETRIES),
        REVIEW_SHARE="0", PROVIDER_URL=provider.url,
        # the provider posts replies to the ingress; the test posts them to each replica
        CALLBACK_PUBLIC_URL="http://callback.ingress.invalid")
    for name, service in (("orders", "orders"), ("dispatch", "dispatch"),
                          *((replica, "callback") for replica in CALLBACKS)):
        system.start_service(name, service)
    for service in ("orders", "dispatch"):
        system.start_relay(f"{service}-relay", service)
    with system.all_ready():
        yield system


class Clock:
    """The services' clock, moved forward by the test through their offset file."""

    def __init__(self, replicas: Replicas) -> None:
        self.replicas = replicas
        self.offset_minutes = 0.0
        self.reader = OffsetFileClock(str(replicas.clock_file))

    def now(self):  # noqa: ANN201
        return self.reader.now()

    def advance(self, minutes: float) -> None:
        self.offset_minutes += minutes
        self.replicas.move_clock(self.offset_minutes)


def per_task(envelopes: list[dict]) -> dict[str, Counter]:
    counts: dict[str, Counter] = {}
    for e in envelopes:
        counts.setdefault(e["payload"]["task_id"], Counter())[e["event_type"]] += 1
    return counts


def race_timers(rpc) -> None:  # noqa: ANN001
    """Four passes asked for at once, on top of both replicas' own timers."""
    for call in [rpc.callback.run_timers.call_async() for _ in range(4)]:
        call.result()


def reply_to_both(replicas: Replicas, message_id: str, reply: str) -> list[int]:
    """The same reply delivered to both replicas at once (a provider's retry, an ingress)."""
    statuses: list[int] = []

    def post(replica: str) -> None:
        statuses.append(requests.post(
            f"http://127.0.0.1:{replicas.ports[replica]}/callback/v1/replies", timeout=20,
            json={"message_id": message_id, "reply": reply},
            headers={"X-Provider-Token": "stand-in-token"}).status_code)

    threads = [threading.Thread(target=post, args=(r,)) for r in CALLBACKS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(statuses)


def test_two_replicas_send_each_confirmation_once_and_act_on_each_timer_once(replicas,
                                                                             provider):
    with ClusterRpcProxy({"AMQP_URI": replicas.env["AMQP_URI"]}, timeout=30) as rpc:
        clock = Clock(replicas)
        system = DispatchSystem(rpc.orders, rpc.dispatch,
                                f"http://127.0.0.1:{replicas.ports['dispatch']}", clock)
        system.callback = rpc.callback
        partner = system.register_partner(capacity=100)
        installs = []
        for number in range(6):
            order_id = rpc.orders.create_order({
                "product_id": system.customer_with_heater(f"1380000{number:04d}"),
                "order_type": "install", "channel": "phone", "agent_id": "a7"})["order_id"]
            complete_visit(system, partner, order_id, installation_barcode=f"BAR-R{number}")
            installs.append(order_id)
        repair = system.repair("13800009999")
        complete_visit(system, partner, repair)
        task = {o: one_task(system, o)["task_id"] for o in [*installs, repair]}
        confirm, problem, silent = installs[:3], installs[3], installs[4:]

        def all_in(orders: list[str], status: str, attempts: int) -> bool:
            """After one more race of passes: every task of `orders` in this state?"""
            race_timers(rpc)
            return all((t["status"], t["attempts"]) == (status, attempts)
                       for t in (rpc.callback.get_task(task[o]) for o in orders))

        # the first confirmations: both replicas' timers race for every install
        wait_until(lambda: all_in(installs, "awaiting_reply", 0), timeout=60, interval=0.3,
                   message="every confirmation sent and recorded")
        messages = {m["reference"]: m["message_id"] for m in provider.sent()}
        assert sorted(messages) == sorted(task[o] for o in installs)

        assert rpc.callback.next_task("a1")["task_id"] == task[repair]  # a1 holds it

        # the same reply reaches both replicas at once: one takes it, the other refuses it
        for order_id in confirm:
            assert reply_to_both(replicas, messages[task[order_id]], "1") == [200, 409]
        assert reply_to_both(replicas, messages[task[problem]], "2") == [200, 409]

        # the problem reported goes to an agent, first in the queue
        assert rpc.callback.next_task("a9")["task_id"] == task[problem]
        rpc.callback.record_outcome({"task_id": task[problem], "agent_id": "a9",
                                     "outcome": "verified", "satisfaction": 4})

        # three rounds of no reply for the silent ones; a1's lease runs out in the first
        for attempt, retry in ((1, RETRIES[0]), (2, RETRIES[1]), (3, None)):
            clock.advance(REPLY_WITHIN.total_seconds() / 60 + 1)
            if attempt == 1:
                calls = [rpc.callback.next_task.call_async(agent) for agent in ("a2", "a3")]
                taken = [call.result() for call in calls]
                assert sorted(t["task_id"] if t else "" for t in taken) == ["", task[repair]]
            status = "open" if retry else "unverified"
            wait_until(lambda s=status, a=attempt: all_in(silent, s, a), timeout=60,
                       interval=0.3, message=f"attempt {attempt} unanswered")
            if retry:
                clock.advance(retry + 1)
                wait_until(lambda a=attempt: all_in(silent, "awaiting_reply", a), timeout=60,
                           interval=0.3, message=f"confirmation {attempt + 1} sent")
        race_timers(rpc)  # one more pass after the fact changes nothing
        log = whole_log(rpc.callback)

    counts = per_task(log)
    once = {"verification_task_created": 1, "confirmation_send_started": 1,
            "confirmation_requested": 1}
    for order_id in confirm:
        assert counts[task[order_id]] == {**once, "order_verified": 1}
    assert counts[task[problem]] == {**once, "problem_reported": 1, "task_leased": 1,
                                     "order_verified": 1}
    for order_id in silent:
        assert counts[task[order_id]] == {
            "verification_task_created": 1, "confirmation_send_started": 3,
            "confirmation_requested": 3, "callback_unanswered": 3, "order_unverified": 1}
    assert counts[task[repair]] == {"verification_task_created": 1, "task_leased": 2}

    # what the provider was asked: one request per confirmation, each with its own key
    asked = provider.received()
    assert Counter(r["reference"] for r in asked) == {
        **{task[o]: 1 for o in [*confirm, problem]}, **{task[o]: 3 for o in silent}}
    assert len({r["idempotency_key"] for r in asked}) == len(asked) == len(provider.sent())
