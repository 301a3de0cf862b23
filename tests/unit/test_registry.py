"""The contracts registry knows every event, whichever contracts module a process imported."""

from __future__ import annotations

import subprocess
import sys


def test_a_process_that_imported_one_contracts_module_still_knows_every_event():
    code = ("import contracts.orders\n"
            "from contracts.registry import event_schema, event_types\n"
            "event_schema('order_verified'); event_schema('claim_decided')\n"
            "print(len(event_types()))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert int(done.stdout) >= 35  # orders, dispatch, callback and settlement events
