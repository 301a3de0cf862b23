"""Dispatch end to end: orders' events in, assignment, the signed gateway over real HTTP."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from serviceloop.answers import ANSWERS_KEPT_DAYS
from serviceloop.clock import isoformat
from serviceloop.db import make_engine
from services.dispatch.service import DispatchService
from tests.helpers import wait_until
from tests.integration.dispatch_system import (
    DispatchSystem,
    dispatch_config,
    free_port,
    running_system,
)


@pytest.fixture
def system(container_factory, service_config, database_for, backend, broker_uri, clock):
    with running_system(container_factory, service_config, broker_uri, clock,
                        database_for("orders", backend), database_for("dispatch", backend)) \
            as running:
        yield running


@pytest.fixture
def second_gateway(system, container_factory, service_config):
    """Another dispatch replica on the same database: its own process state (remembered
    secrets, rate limits), its own port."""
    port = free_port()
    replica = container_factory(DispatchService,
                                dispatch_config(service_config, system.dispatch_url, port))
    replica.start()
    return f"http://127.0.0.1:{port}"


def assigned(system: DispatchSystem, order_id: str) -> dict:
    wait_until(lambda: system.dispatch_status(order_id) == "assigned",
               message=f"{order_id} to be assigned")
    return system.dispatch.get_order(order_id)


def path(order_id: str, action: str = "") -> str:
    return f"/api/v1/orders/{order_id}" + (f"/{action}" if action else "")


def test_a_repair_goes_from_assignment_to_completion_over_the_gateway(system):
    partner = system.register_partner()
    order_id = system.repair("13800000001")
    view = assigned(system, order_id)
    assert view["partner_id"] == partner.partner_id
    listed = system.signed(partner, "GET", "/api/v1/orders?nonce=a1")
    assert listed.status_code == 200, listed.text
    assert [o["order_id"] for o in listed.json()["items"]] == [order_id]

    accepted = system.signed(partner, "POST", path(order_id, "accept"), {}, key="k-accept")
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["status"] == "accepted"

    now = system.clock.now()
    window = {"window_start": isoformat(now + timedelta(hours=2)),
              "window_end": isoformat(now + timedelta(hours=4))}
    scheduled = system.signed(partner, "POST", path(order_id, "schedule"), window, key="k-s")
    assert scheduled.status_code == 200, scheduled.text
    system.clock.advance(hours=3)
    arrived = system.signed(partner, "POST", path(order_id, "arrive"),
                            {"coordinates": {"lat": 23.1301, "lon": 113.3302}}, key="k-a")
    assert arrived.json()["status"] == "on_site", arrived.text
    completed = system.signed(partner, "POST", path(order_id, "complete"), {
        "work_done": "replaced the heating element", "fault_code": "WH-E1",
        "parts": [{"part_code": "WH-P-ELEMENT", "old_serial": "OLD1", "new_serial": "NEW1",
                   "fee_cents": 12000}],
        "labour_fee_cents": 8000, "travel_fee_cents": 2000, "travel_distance_km": 12,
        "confirmation_code": system.dispatch.get_order(order_id)["confirmation_code"],
    }, key="k-c")
    assert completed.status_code == 200, completed.text
    assert completed.json()["status"] == "completed"
    history = system.dispatch.order_history(order_id)
    types = [e["event_type"] for e in history]
    assert types == ["order_received", "order_assigned", "order_accepted",
                     "appointment_scheduled", "partner_arrived", "order_completed"]
    done = history[-1]["payload"]
    assert done["parts_fee_cents"] == 12000 and done["confirmation_matched"] is True
    assert done["arrival_lat"] == pytest.approx(23.1301)
    assert history[-1]["actor"] == f"partner:{partner.partner_id}"
    # each partner action's events name the request that caused them, by the correlation id
    # its answer carried (what a partner quotes to support)
    answers = [accepted, scheduled, arrived, completed]
    assert [e["causation_id"] for e in history[2:]] == \
        [f"http-{a.headers['X-Correlation-Id']}" for a in answers]


def test_requests_without_a_valid_fresh_signature_are_401_and_replays_refused(system):
    partner = system.register_partner()
    order_id = system.repair("13800000002")
    assigned(system, order_id)
    unsigned = system.session.get(system.base_url + "/api/v1/orders", timeout=10)
    assert unsigned.status_code == 401
    assert unsigned.json()["error"]["code"] == "missing_signature"
    wrong = system.signed(type(partner)(partner.partner_id, "not-the-secret"), "GET",
                          "/api/v1/orders")
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (401, "bad_signature")
    stale = system.signed(partner, "GET", "/api/v1/orders", timestamp=1_000_000_000)
    assert (stale.status_code, stale.json()["error"]["code"]) == (401, "stale_signature")

    listed = system.signed(partner, "GET", "/api/v1/orders")
    assert listed.status_code == 200
    replay = system.session.send(listed.request.copy())
    assert (replay.status_code, replay.json()["error"]["code"]) == (401, "signature_replayed")

    rejected = system.signed(partner, "POST", path(order_id, "schedule"), {}, key="k0")
    assert rejected.status_code == 422
    replay = system.session.send(rejected.request.copy())
    assert (replay.status_code, replay.json()["error"]["code"]) == (401, "signature_replayed")

    first = system.signed(partner, "POST", path(order_id, "accept"), {}, key="k1")
    assert first.status_code == 200
    # resent byte for byte (a client's automatic retry): the first answer, nothing new
    resent = system.session.send(first.request.copy())
    assert resent.status_code == 200 and resent.headers["Idempotent-Replayed"] == "true"
    assert resent.json() == first.json()
    # the same signature under another Idempotency-Key: a replay
    other_key = first.request.copy()
    other_key.headers["Idempotency-Key"] = "k2"
    replay = system.session.send(other_key)
    assert (replay.status_code, replay.json()["error"]["code"]) == (401, "signature_replayed")
    types = [e["event_type"] for e in system.dispatch.order_history(order_id)]
    assert types.count("order_accepted") == 1


def test_a_partner_cannot_see_or_touch_another_partners_order(system):
    owner = system.register_partner("甲", rating=5.0)
    other = system.register_partner("乙", rating=1.0)
    order_id = system.repair("13800000003")
    assert assigned(system, order_id)["partner_id"] == owner.partner_id
    for method, action, body in (("GET", "", None), ("POST", "accept", {}),
                                 ("POST", "reject", {"reason_code": "other"})):
        answer = system.signed(other, method, path(order_id, action), body,
                               key=str(uuid.uuid4()))
        assert answer.status_code == 404, answer.text
        assert answer.json()["error"]["code"] == "order_not_found"
    probe = system.signed(other, "GET", path(str(uuid.uuid4())))
    assert probe.status_code == 404
    assert system.dispatch.get_order(order_id)["status"] == "assigned"
    assert len(system.dispatch.order_history(order_id)) == 2


def test_the_same_idempotency_key_returns_the_first_answer_and_another_body_is_409(system):
    partner = system.register_partner()
    order_id = system.repair("13800000004")
    assigned(system, order_id)
    first = system.signed(partner, "POST", path(order_id, "accept"), {"note": "ok"}, key="same")
    again = system.signed(partner, "POST", path(order_id, "accept"), {"note": "ok"}, key="same")
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    other = system.signed(partner, "POST", path(order_id, "accept"), {"note": "no"}, key="same")
    assert (other.status_code, other.json()["error"]["code"]) == (409,
                                                                  "idempotency_key_reused")
    fresh = system.signed(partner, "POST", path(order_id, "accept"), {}, key="new")
    assert (fresh.status_code, fresh.json()["error"]["code"]) == (409, "already_accepted")
    types = [e["event_type"] for e in system.dispatch.order_history(order_id)]
    assert types.count("order_accepted") == 1


def test_answers_to_idempotency_keys_are_forgotten_once_kept_their_time(system):
    partner = system.register_partner()
    old_order, recent_order = system.repair("13800000014"), system.repair("13800000015")
    assigned(system, old_order)
    assigned(system, recent_order)
    system.signed(partner, "POST", path(old_order, "accept"), {}, key="old")
    system.clock.advance(days=ANSWERS_KEPT_DAYS - 1)
    recent = system.signed(partner, "POST", path(recent_order, "accept"), {}, key="recent")
    system.clock.advance(days=2)
    assert system.dispatch.forget_old_answers()["idempotency_keys"] == 1
    again = system.signed(partner, "POST", path(recent_order, "accept"), {}, key="recent")
    assert again.json() == recent.json() and again.headers["Idempotent-Replayed"] == "true"
    late = system.signed(partner, "POST", path(old_order, "accept"), {}, key="old")
    # a new request: the order decides (accepted already, or taken away by its timers while
    # the clock was a month on)
    assert "Idempotent-Replayed" not in late.headers and late.status_code in (404, 409)


def test_bad_input_is_4xx_with_field_errors_and_changes_nothing(system):
    partner = system.register_partner()
    order_id = system.repair("13800000005")
    assigned(system, order_id)
    before = len(system.dispatch.order_history(order_id))
    cases = [
        (dict(raw=b"{not json"), 400, "malformed_json"),
        (dict(body={"note": 5}), 422, "invalid_input"),
        (dict(body={"status": "completed"}), 422, "invalid_input"),
        (dict(raw=b'{"note": "' + b"x" * 70_000 + b'"}'), 413, "payload_too_large"),
    ]
    for kwargs, status, code in cases:
        answer = system.signed(partner, "POST", path(order_id, "accept"), key=str(uuid.uuid4()),
                               **kwargs)
        assert answer.status_code == status, (kwargs.keys(), answer.text)
        assert answer.json()["error"]["code"] == code
    no_key = system.signed(partner, "POST", path(order_id, "accept"), {})
    assert (no_key.status_code, no_key.json()["error"]["code"]) == (
        400, "idempotency_key_required")
    complete_early = system.signed(partner, "POST", path(order_id, "complete"),
                                   {"work_done": "x", "labour_fee_cents": 1}, key="early")
    assert (complete_early.status_code, complete_early.json()["error"]["code"]) == (
        409, "not_accepted")
    unknown = system.signed(partner, "GET", "/api/v1/nothing")
    assert unknown.status_code == 404
    assert len(system.dispatch.order_history(order_id)) == before


def test_a_read_of_an_order_the_partner_no_longer_holds_is_404_and_an_action_409(system):
    first = system.register_partner("甲", rating=5.0)
    system.register_partner("乙", rating=1.0)
    order_id = system.repair("13800000006")
    assert assigned(system, order_id)["partner_id"] == first.partner_id
    rejected = system.signed(first, "POST", path(order_id, "reject"), {"reason_code": "other"},
                             key="r1")
    assert (rejected.status_code, rejected.json()["status"]) == (200, "released")
    read = system.signed(first, "GET", path(order_id))
    assert (read.status_code, read.json()["error"]["code"]) == (404, "order_not_found")
    accept = system.signed(first, "POST", path(order_id, "accept"), {}, key="a1")
    assert (accept.status_code, accept.json()["error"]["code"]) == (409, "order_reassigned")


def test_a_rotated_secret_takes_effect_at_once_on_every_replica(system, second_gateway):
    partner = system.register_partner()
    order_id = system.repair("13800000007")
    assigned(system, order_id)
    gateways = (system.base_url, second_gateway)
    for base_url in gateways:  # each replica has now read and remembers the secret
        system.base_url = base_url
        assert system.signed(partner, "GET", path(order_id)).status_code == 200
    rotated = system.dispatch.rotate_secret(partner.partner_id)
    renewed = type(partner)(partner.partner_id, rotated["secret"])
    for base_url in gateways:
        system.base_url = base_url
        old = system.signed(partner, "GET", path(order_id))
        assert (old.status_code, old.json()["error"]["code"]) == (401, "bad_signature")
        old_post = system.signed(partner, "POST", path(order_id, "accept"), {},
                                 key=f"k-{base_url}")
        assert (old_post.status_code, old_post.json()["error"]["code"]) == (
            401, "bad_signature")
        assert system.signed(renewed, "GET", path(order_id)).status_code == 200
    assert [e["event_type"] for e in system.dispatch.order_history(order_id)] == [
        "order_received", "order_assigned"]


def test_a_signed_request_is_used_once_across_replicas(system, second_gateway):
    partner = system.register_partner()
    order_id = system.repair("13800000008")
    assigned(system, order_id)
    read = system.signed(partner, "GET", path(order_id, ""))
    assert read.status_code == 200
    again = system.session.send(read.request.copy())
    assert (again.status_code, again.json()["error"]["code"]) == (401, "signature_replayed")
    elsewhere = read.request.copy()
    elsewhere.url = second_gateway + path(order_id)
    replayed = system.session.send(elsewhere)
    assert (replayed.status_code, replayed.json()["error"]["code"]) == (401,
                                                                      "signature_replayed")
    # a POST answered by one replica: the other gives the first answer to its retry
    accepted = system.signed(partner, "POST", path(order_id, "accept"), {}, key="k-once")
    assert accepted.status_code == 200
    retry = accepted.request.copy()
    retry.url = second_gateway + path(order_id, "accept")
    resent = system.session.send(retry)
    assert resent.status_code == 200 and resent.headers["Idempotent-Replayed"] == "true"
    assert resent.json() == accepted.json()
    types = [e["event_type"] for e in system.dispatch.order_history(order_id)]
    assert types.count("order_accepted") == 1


_FAILING_KEY_TRIGGER = {
    "postgresql": [
        "CREATE FUNCTION refuse_key() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "RAISE EXCEPTION 'refused' USING ERRCODE = 'unique_violation'; END $$",
        "CREATE TRIGGER refuse_key BEFORE INSERT ON idempotency_keys FOR EACH ROW "
        "WHEN (NEW.key = 'fails') EXECUTE FUNCTION refuse_key()"],
    "sqlite": [
        "CREATE TRIGGER refuse_key BEFORE INSERT ON idempotency_keys "
        "WHEN NEW.key = 'fails' BEGIN SELECT RAISE(ABORT, 'refused'); END"],
}


def test_a_refused_or_failed_action_leaves_its_signature_used_and_nothing_else(system):
    """A POST's signature is recorded in its action's transaction: an action refused (409)
    or failing in its last round trip (here the database refuses the answer's row, after the
    read model was written) rolls back to the action's savepoint; the signature is committed
    and a replay refused."""
    partner = system.register_partner()
    order_id = system.repair("13800000009")
    assigned(system, order_id)
    early = system.signed(partner, "POST", path(order_id, "complete"),
                          {"work_done": "x", "labour_fee_cents": 1}, key="early")
    assert (early.status_code, early.json()["error"]["code"]) == (409, "not_accepted")
    replay = system.session.send(early.request.copy())
    assert (replay.status_code, replay.json()["error"]["code"]) == (401, "signature_replayed")

    engine = make_engine(system.dispatch_url)
    try:
        with engine.begin() as conn:
            for statement in _FAILING_KEY_TRIGGER[engine.dialect.name]:
                conn.exec_driver_sql(statement)
        failed = system.signed(partner, "POST", path(order_id, "accept"), {}, key="fails")
        assert (failed.status_code, failed.json()["error"]["code"]) == (503, "unavailable")
        assert system.dispatch.get_order(order_id)["status"] == "assigned"
        replay = system.session.send(failed.request.copy())
        assert (replay.status_code, replay.json()["error"]["code"]) == (401,
                                                                        "signature_replayed")
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER refuse_key" + (
                " ON idempotency_keys" if engine.dialect.name == "postgresql" else ""))
    finally:
        engine.dispose()
    accepted = system.signed(partner, "POST", path(order_id, "accept"), {}, key="fails")
    assert (accepted.status_code, accepted.json()["status"]) == (200, "accepted")
    types = [e["event_type"] for e in system.dispatch.order_history(order_id)]
    assert types == ["order_received", "order_assigned", "order_accepted"]


def test_a_partner_lists_its_orders_page_by_page_newest_first(system):
    partner = system.register_partner()
    order_ids = []
    for n in range(3):  # assigned to it a minute apart
        order_ids.append(system.repair(f"1380000010{n}"))
        assert assigned(system, order_ids[-1])["partner_id"] == partner.partner_id
        system.clock.advance(minutes=1)
    other = system.register_partner("海珠家电维修")
    newest_first = order_ids[::-1]
    accepted = system.signed(partner, "POST", path(order_ids[0], "accept"), {}, key="k-l")
    assert accepted.status_code == 200, accepted.text

    def listed(who, query: str) -> dict:  # noqa: ANN001
        answer = system.signed(who, "GET", f"/api/v1/orders?nonce={uuid.uuid4().hex}{query}")
        assert answer.status_code == 200, answer.text
        page = answer.json()
        return {"ids": [o["order_id"] for o in page["items"]], "total": page["total"],
                "page": page["page"]}

    assert listed(partner, "&page_size=2") == {"ids": newest_first[:2], "total": 3, "page": 1}
    assert listed(partner, "&page_size=2&page=2") == {"ids": newest_first[2:], "total": 3,
                                                      "page": 2}
    assert listed(partner, "&page_size=2&page=3") == {"ids": [], "total": 3, "page": 3}
    assert listed(partner, "&status=assigned") == {"ids": newest_first[:2], "total": 2,
                                                   "page": 1}
    assert listed(partner, "&status=accepted") == {"ids": order_ids[:1], "total": 1, "page": 1}
    assert listed(partner, "&status=completed&page=2") == {"ids": [], "total": 0, "page": 2}
    assert listed(other, "") == {"ids": [], "total": 0, "page": 1}
