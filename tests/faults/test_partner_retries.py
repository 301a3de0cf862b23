"""Scenario 5: a partner whose every POST times out on its side (the gateway got it and acts
on it) and is sent again with the same Idempotency-Key, and agents who send every outcome
again with its request id: each step happens once, and the retry gets the first answer."""

from __future__ import annotations

import requests

from serviceloop.partner_sdk import PartnerClient
from tests.faults.checks import assert_nothing_lost_or_doubled
from tests.faults.load import Load

LOAD_SECONDS = 10


class ImpatientPartner(PartnerClient):
    """Gives up waiting for every POST's answer at once, then sends it again as its SDK does:
    the same key and body, a fresh signature."""

    resent = 0

    def _send(self, method: str, url: str, query: dict | None, data: bytes | None,
              headers: dict[str, str]) -> requests.Response:
        if method == "POST":
            try:  # (on a busy machine the answer may be in before the first read: no timeout)
                self.session.request(method, url, params=query, data=data, headers=headers,
                                     auth=self.auth, timeout=(5, 0.001)).close()
            except requests.Timeout:
                pass
            ImpatientPartner.resent += 1
            self._await_new_timestamp()
        return super()._send(method, url, query, data, headers)


def answered(system, operation: str) -> float:  # noqa: ANN001
    """How many requests for `operation` the gateway has answered (its /metrics)."""
    metrics = requests.get(f"{system.gateway()}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("serviceloop_gateway_requests_total{")
               and f'operation="{operation}"' in line)


def test_every_post_sent_again_with_its_key_acts_once(system, world):
    operations = ("accept", "schedule", "arrive", "complete")
    before = {operation: answered(system, operation) for operation in operations}
    with Load(system, world, partner_class=ImpatientPartner, agents_ask_twice=True) as load:
        load.open_orders(LOAD_SECONDS)
        load.intake_done()
        assert_nothing_lost_or_doubled(system, load)
    # every outcome an agent saw answered was asked again and answered the same
    assert load.retries["record_outcome sent again"] == len(load.verified) > 0
    assert not [p for p in load.problems if "asked again" in p], load.problems
    # four POSTs per order (accept, schedule, arrive, complete), each sent twice, and the
    # gateway answered both copies
    assert ImpatientPartner.resent >= 4 * len(load.accepted) > 0
    for operation in operations:
        assert answered(system, operation) - before[operation] >= 2 * len(load.accepted)
