"""`audit verify` as it reads (serviceloop/audit/stream.py) finds exactly what `verify` finds
over the same logs, at the same positions, in the same order: every kind of tampering, pages
checked in bulk and pages checked event by event alike."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime

import pytest
from kombu.utils import json as kombu_json

from serviceloop import audit
from serviceloop.audit import read, stream
from serviceloop.audit.wire import pack_page, unpack_page
from serviceloop.eventstore import GENESIS_HASH, Envelope
from tests.unit.test_audit_rules import CAPTURED, first_break, rehash


class _Answer:
    def __init__(self, value: object) -> None:
        self.value = value

    def result(self) -> object:
        return self.value


class _LogRpc:
    """One service's `events_since(position, limit, packed=True)` over a log held here, sent
    through kombu's JSON as nameko sends it. Pages follow the log as it is listed (a log
    tampered with in memory may list positions out of order, as a database would not)."""

    def __init__(self, log: list[dict]) -> None:
        self.envelopes = [Envelope.from_dict(body) for body in log]
        self.after: dict[int, int] = {0: 0}  # a page's last position: where the next starts
        self.events_since = self

    def call_async(self, position: int, limit: int, packed: bool = False,
                   event_types: list[str] | None = None) -> _Answer:
        assert packed
        start, page = self.after[position], []
        for n, envelope in enumerate(self.envelopes[start:], start):
            if len(page) == limit:
                break
            if event_types is None or envelope.event_type in event_types:
                page.append(envelope)
                self.after[envelope.global_position] = n + 1
        return _Answer(kombu_json.loads(kombu_json.dumps(pack_page(page))))

    def __call__(self, position: int, limit: int, packed: bool = False) -> dict:
        if position not in self.after:  # a single event looked up by its position
            self.after[position] = next(n for n, e in enumerate(self.envelopes)
                                        if e.global_position == position + 1)
        return self.call_async(position, limit, packed).result()

    def log_head(self) -> dict:
        last = self.envelopes[-1] if self.envelopes else None
        return {"position": last.global_position if last else 0,
                "hash": last.hash if last else GENESIS_HASH}


class _Rpc:
    def __init__(self, logs: dict[str, list[dict]]) -> None:
        for service, log in logs.items():
            setattr(self, service, _LogRpc(log))


@pytest.fixture
def logs() -> dict[str, list[dict]]:
    return copy.deepcopy(CAPTURED["logs"])


@pytest.fixture(autouse=True)
def small_pages(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(read, "PAGE", 4)  # every log spans pages: state carried across them


def both(logs: dict[str, list[dict]]) -> list[dict]:
    """The breaks `verify_over_rpc` finds, checked to be those `verify` finds."""
    verified = audit.verify_over_rpc(_Rpc(logs), list(logs))
    assert verified.breaks == audit.verify(logs)
    assert verified.events == {s: len(log) for s, log in logs.items()}
    return verified.breaks


def test_the_captured_logs_verify_clean_and_every_page_passes_in_bulk(logs, monkeypatch):
    checked_one_by_one = []
    original = stream._LogCheck._event_by_event
    monkeypatch.setattr(stream._LogCheck, "_event_by_event",
                        lambda self, *a: checked_one_by_one.append(1) or original(self, *a))
    verified = audit.verify_over_rpc(_Rpc(logs), list(logs))
    assert verified.breaks == [] and checked_one_by_one == []
    point = audit.checkpoint(logs, "then")
    assert audit.checkpoint(verified.chains(), "then") == point
    assert audit.verify_against(verified.chains(), point) == []


def test_an_edited_payload_is_found_at_its_position(logs):
    logs["dispatch"][6]["payload"]["labour_fee_cents"] = 9000
    breaks = both(logs)
    assert first_break(breaks) == ("dispatch", 7)
    assert [b["kind"] for b in breaks] == ["hash"]


def test_a_deleted_row_is_found_at_the_gap(logs):
    del logs["orders"][4]
    breaks = both(logs)
    assert first_break(breaks) == ("orders", 5)
    assert {(b["position"], b["kind"]) for b in breaks} >= {(5, "gap"), (6, "chain")}


def test_reordered_positions_are_found_at_the_first_swap(logs):
    log = logs["settlement"]
    log[2], log[3] = log[3], log[2]
    breaks = both(logs)
    assert first_break(breaks) == ("settlement", 3)


def test_a_forged_hash_breaks_its_event_and_the_next_link(logs):
    logs["callback"][1]["hash"] = "f" * 64
    assert [(b["position"], b["kind"]) for b in both(logs)] == [(2, "hash"), (3, "chain")]


def test_a_truncated_tail_is_found_by_causation_and_by_the_checkpoint(logs):
    point = audit.checkpoint(logs, "then")
    del logs["dispatch"][6:]
    assert {b["kind"] for b in both(logs)} == {"causation"}
    verified = audit.verify_over_rpc(_Rpc(logs), list(logs))
    assert audit.verify_against(verified.chains(), point) == audit.verify_against(logs, point)
    assert [b["kind"] for b in audit.verify_against(verified.chains(), point)] == ["shrunk"]


def test_a_rewritten_log_passes_its_chain_and_fails_its_checkpoint(logs):
    point = audit.checkpoint(logs, "then")
    logs["settlement"][3]["payload"]["lines"][0]["approved_cents"] += 1
    rehash(logs["settlement"], 3)
    assert both(logs) == []
    verified = audit.verify_over_rpc(_Rpc(logs), list(logs))
    kinds = {(b["service"], b["kind"]) for b in audit.verify_against(verified.chains(), point)}
    assert kinds == {("settlement", "head"), ("settlement", "merkle")}


def test_a_payload_that_breaks_its_contract_is_found(logs):
    logs["orders"][2]["payload"]["order_type"] = "teleport"
    rehash(logs["orders"], 2)
    (found,) = both(logs)
    assert (found["position"], found["kind"]) == (3, "contract")


def test_a_payload_that_is_not_json_is_a_contract_break(logs):
    body = logs["orders"][5]
    envelope = Envelope.from_dict(body)._replace(payload_json="{not json")
    rpc = _Rpc(logs)
    rpc.orders.envelopes[5] = envelope._replace(hash=envelope.computed_hash())
    rpc.orders.envelopes[6] = rpc.orders.envelopes[6]._replace(
        prev_hash=rpc.orders.envelopes[5].hash)
    rpc.orders.envelopes[6] = rpc.orders.envelopes[6]._replace(
        hash=rpc.orders.envelopes[6].computed_hash())
    (found,) = [b for b in audit.verify_over_rpc(rpc, list(logs)).breaks
                if b["service"] == "orders" and b["position"] == 6]
    assert found["kind"] == "contract" and "not JSON" in found["detail"]


def test_texts_that_need_escaping_take_the_slow_path_and_still_verify(logs):
    for body in logs["callback"]:
        body["actor"] = 'agent:"quoted"\tone'  # json escapes it: the page is checked one by one
    logs["dispatch"][0]["payload"]["name"] = 'Li "the fixer" 李'  # a payload string escaped
    rehash(logs["callback"], 0)
    rehash(logs["dispatch"], 0)
    assert both(logs) == []
    logs["callback"][2]["payload"]["not_in_the_contract"] = "…"
    assert [(b["service"], b["position"], b["kind"]) for b in both(logs)] == [
        ("callback", 3, "hash"), ("callback", 3, "contract")]


def test_a_page_of_texts_that_could_not_be_joined_is_sent_plain_and_read_back():
    envelope = Envelope(1, "e\x1fvil", "s", 1, "t", 1, "2026-11-02T10:00:00+00:00", "c",
                        "cmd-1", "system", "{}", GENESIS_HASH, "h")
    page = kombu_json.loads(kombu_json.dumps(pack_page([envelope])))
    assert "event_id" not in page["packed"]
    assert unpack_page(page) == {name: [value] for name, value in envelope._asdict().items()}
    assert unpack_page(kombu_json.loads(kombu_json.dumps(pack_page([])))) == {
        name: [] for name in Envelope._fields}


def test_read_logs_hands_out_each_event_as_a_dict_with_its_payload_decoded(logs):
    read_back = audit.read_logs(_Rpc(logs), list(logs))
    for service, log in logs.items():
        assert [b["payload"] for b in read_back[service]] == [b["payload"] for b in log]
        assert [json.loads(b["payload_json"]) for b in read_back[service]] == [
            b["payload"] for b in log]
        assert [b["hash"] for b in read_back[service]] == [b["hash"] for b in log]
    assert audit.verify(read_back) == []


def test_progress_is_told_each_page_as_it_is_checked_and_as_it_is_read(logs):
    checked: dict[str, list[int]] = {}
    audit.verify_over_rpc(_Rpc(logs), list(logs),
                          lambda service, count: checked.setdefault(service, []).append(count))
    read_back: dict[str, list[int]] = {}
    audit.read_logs(_Rpc(logs), list(logs),
                    lambda service, count: read_back.setdefault(service, []).append(count))
    for service, log in logs.items():  # pages of 4: 4, 8, … up to the whole log
        pages = list(range(4, len(log), 4)) + [len(log)]
        assert checked[service][:len(pages)] == pages and checked[service][-1] == len(log)
        assert read_back[service][:len(pages)] == pages and read_back[service][-1] == len(log)


def test_a_reader_of_a_few_kinds_is_sent_only_those_and_each_log_s_newest_event(logs):
    kinds = {"order_created", "order_assigned", "order_verified"}
    everything = audit.read_logs(_Rpc(logs), list(logs))
    told: dict[str, list[int]] = {}
    few = audit.read_logs(_Rpc(logs), list(logs),
                          lambda service, at: told.setdefault(service, []).append(at),
                          event_types=kinds)
    for service, log in everything.items():
        wanted = [body for body in log if body["event_type"] in kinds]
        if log[-1]["event_type"] not in kinds:
            wanted.append(log[-1])
        assert few[service] == wanted
        assert told[service][-1] == log[-1]["global_position"]  # read to the end
    now = datetime(2026, 12, 1, tzinfo=UTC)
    assert audit.open_loops(audit.read_logs(_Rpc(logs), list(logs),
                                            event_types=audit.LOOP_EVENT_TYPES), now) == \
        audit.open_loops(everything, now)


@pytest.mark.parametrize("text", ['{"a":1,"b":["é",2.5,null]}', ' {"a":1}', '{"a":1} ', '"x"',
                                  "3", "{not json", '{"a":1}x', ""])
def test_a_payload_is_decoded_as_json_loads_decodes_it_or_refused_as_it_refuses(text):
    try:
        expected = json.loads(text)
    except json.JSONDecodeError:
        with pytest.raises(json.JSONDecodeError):
            read._decoded(text)
    else:
        assert read._decoded(text) == expected
