"""`serviceloop partner …`: what the command line makes of its arguments (no services)."""

from __future__ import annotations

import argparse
import json
import os
from datetime import datetime, timedelta, timezone

import pytest

from contracts.errors import ValidationFailed
from serviceloop.cli import build_parser
from serviceloop.cli.partner import (
    completion,
    parse_part,
    parse_region,
    save_credentials,
    schedule_window,
)

CST = timezone(timedelta(hours=8))


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["partner", *argv])


def test_a_part_line_becomes_a_part_of_the_completion() -> None:
    assert parse_part("WH-P-ELEMENT:OLD-1:NEW-1:12000") == {
        "part_code": "WH-P-ELEMENT", "old_serial": "OLD-1", "new_serial": "NEW-1",
        "fee_cents": 12000, "charged_to": "manufacturer"}


def test_a_part_without_old_serial_and_paid_by_the_customer() -> None:
    assert parse_part("AC-P-FAN::N9:0:customer") == {
        "part_code": "AC-P-FAN", "old_serial": None, "new_serial": "N9", "fee_cents": 0,
        "charged_to": "customer"}


@pytest.mark.parametrize("line", [
    "WH-P-ELEMENT:OLD:NEW",  # no fee
    "WH-P-ELEMENT:OLD:NEW:12.50",  # cents are whole
    "WH-P-ELEMENT:OLD:NEW:-5",
    "WH-P-ELEMENT:OLD::100",  # no new serial
    ":OLD:NEW:100",  # no part code
    "WH-P-ELEMENT:OLD:NEW:100:dealer",  # nobody else pays
    "A:B:C:1:customer:extra",
])
def test_a_malformed_part_line_is_refused(line: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_part(line)


def test_a_malformed_part_line_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        parse("complete", "o-1", "--work", "w", "--labour", "1", "--part", "X:Y")
    assert exited.value.code == 2
    assert "PART_CODE:OLD_SERIAL:NEW_SERIAL:FEE_CENTS" in capsys.readouterr().err


def test_regions_are_province_city_district_with_wildcards() -> None:
    assert parse_region("广东省/广州市/天河区") == {
        "province": "广东省", "city": "广州市", "district": "天河区"}
    assert parse_region("广东省/*/*") == {"province": "广东省", "city": "*", "district": "*"}
    for bad in ("广东省/广州市", "*/*/*", "广东省/*/天河区", "广东省//天河区", "a/b/c/d"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_region(bad)


def test_register_collects_repeated_regions_and_categories() -> None:
    args = parse("register", "--name", "天河家电服务部", "--region", "广东省/广州市/天河区",
                 "--region", "广东省/广州市/*", "--category", "water_heater", "--category",
                 "air_conditioner", "--capacity", "20", "--save", "x.json")
    assert [r["district"] for r in args.regions] == ["天河区", "*"]
    assert args.categories == ["water_heater", "air_conditioner"]
    assert (args.capacity, args.rating, args.save) == (20, None, "x.json")


def test_update_sends_only_what_is_given() -> None:
    args = parse("update", "p-1", "--capacity", "5")
    assert (args.daily_capacity, args.active, args.regions, args.rating) == (5, None, None, None)
    assert parse("update", "p-1", "--inactive").active is False
    assert parse("update", "p-1", "--active").active is True
    with pytest.raises(SystemExit):
        parse("update", "p-1", "--active", "--inactive")


def test_complete_builds_the_request_body_with_only_given_options() -> None:
    args = parse("complete", "o-1", "--work", "换加热管", "--fault", "WH-E1", "--part",
                 "WH-P-ELEMENT:OLD-1:NEW-1:12000", "--labour", "8000", "--travel", "1500",
                 "--credentials", "c.json")
    assert completion(args) == {
        "work_done": "换加热管", "fault_code": "WH-E1", "labour_fee_cents": 8000,
        "travel_fee_cents": 1500, "parts": [parse_part("WH-P-ELEMENT:OLD-1:NEW-1:12000")]}
    assert (args.order_id, args.credentials, args.idempotency_key) == ("o-1", "c.json", None)


def test_schedule_in_hours_is_a_window_from_now() -> None:
    args = parse("schedule", "o-1", "--in-hours", "0", "--hours", "2")
    now = datetime(2030, 5, 1, 9, 30, 15, 123456, tzinfo=CST)
    assert schedule_window(args, now) == ("2030-05-01T09:30:15+08:00",
                                          "2030-05-01T11:30:15+08:00")


def test_schedule_takes_explicit_start_and_end() -> None:
    args = parse("schedule", "o-1", "--start", "2030-05-01T09:00+08:00", "--end",
                 "2030-05-01T11:00+08:00")
    assert schedule_window(args) == ("2030-05-01T09:00:00+08:00", "2030-05-01T11:00:00+08:00")


@pytest.mark.parametrize("argv", [
    (),  # no window at all
    ("--start", "2030-05-01T09:00+08:00"),  # no end
    ("--start", "tomorrow", "--end", "later"),
    ("--start", "2030-05-01T09:00+08:00", "--end", "2030-05-01T11:00+08:00", "--in-hours", "1"),
])
def test_schedule_without_a_clear_window_is_refused(argv: tuple[str, ...]) -> None:
    with pytest.raises(ValidationFailed):
        schedule_window(parse("schedule", "o-1", *argv))


def test_partner_commands_take_their_choices_from_the_contract() -> None:
    assert parse("reject", "o-1", "--reason", "out_of_area").reason == "out_of_area"
    assert parse("orders", "--status", "accepted").status == "accepted"
    with pytest.raises(SystemExit):
        parse("reject", "o-1", "--reason", "bored")
    with pytest.raises(SystemExit):
        parse("cancel-appointment", "o-1", "--reason", "out_of_area")


def test_saved_credentials_are_readable_by_their_owner_only(tmp_path) -> None:
    path = tmp_path / "partners" / "p-1.json"
    path.parent.mkdir()
    path.write_text("{}")
    os.chmod(path, 0o644)
    save_credentials(str(path), "p-1", "s3cret", "http://127.0.0.1:8080")
    assert path.stat().st_mode & 0o777 == 0o600
    assert json.loads(path.read_text()) == {"partner_id": "p-1", "secret": "s3cret",
                                            "gateway": "http://127.0.0.1:8080"}
