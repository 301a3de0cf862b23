"""Capture the template `bench/audit.py` replicates: one repair order's whole life in all
four logs, taken through the real running services (partner over the gateway, agent and
finance over RPC), plus a second order left open after assignment.

    .venv/bin/python -m pytest -q -p no:cacheprovider -p tests.conftest \
        bench/capture_audit_template.py \
        -k postgres

writes bench/data/audit_template.json: per service, the events of both orders and the
settlement period they were closed in, in log order.
"""

from __future__ import annotations

import json
from pathlib import Path

from serviceloop import audit
from serviceloop.services import IMPLEMENTED
from tests.helpers import wait_until
from tests.integration.test_audit import _rpc
from tests.integration.test_settlement import (  # noqa: F401 - the fixture
    complete,
    latest,
    loop,
    verify,
)

TEMPLATE = Path(__file__).resolve().parent / "data" / "audit_template.json"


def test_capture(loop):  # noqa: F811
    partner = loop.register_partner()
    closed = loop.repair("13500000001")
    complete(loop, partner, closed, labour_fee_cents=6000, travel_fee_cents=1500,
             travel_distance_km=12)
    verify(loop, closed, satisfaction=5)
    latest(loop, closed, 2)
    loop.settlement.run(loop.clock.now().strftime("%Y-%m"))
    wait_until(lambda: loop.orders.get_order(closed)["status"] == "closed",
               message="orders to close the settled order")
    open_ = loop.repair("13500000002")
    wait_until(lambda: loop.dispatch_status(open_) == "assigned", message="assignment")
    logs = {s: audit.read_log(_rpc(loop), s) for s in IMPLEMENTED}
    assert audit.verify(logs) == []
    TEMPLATE.write_text(json.dumps({"closed_order": closed, "open_order": open_,
                                    "partner_id": partner.partner_id, "logs": logs},
                                   ensure_ascii=False, indent=1) + "\n")
