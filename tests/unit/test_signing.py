"""Partner request signing: what the gateway accepts and what it refuses, and why."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts import signing
from contracts.signing import MAX_SKEW_SECONDS, SignatureError

NOW = 1_793_000_000.0
SECRETS = {"P1": "secret-of-p1", "P2": "secret-of-p2"}
PATH = "/api/v1/orders/o-1/complete?dry_run=0"
BODY = b'{"parts": [{"code": "HEAT-01", "serial": "S1"}]}'


def secret_for(partner_id: str) -> str | None:
    return SECRETS.get(partner_id)


def headers(partner_id: str = "P1", method: str = "POST", path: str = PATH,
            body: bytes = BODY, now: float = NOW) -> dict[str, str]:
    return signing.signed_headers(partner_id, SECRETS[partner_id], method, path, body, now)


def refusal(sent: dict[str, str], method: str = "POST", path: str = PATH, body: bytes = BODY,
            now: float = NOW) -> str:
    with pytest.raises(SignatureError) as refused:
        signing.verify(sent, secret_for, method, path, body, now)
    return refused.value.code


def test_the_canonical_request_is_the_documented_string() -> None:
    body_hash = hashlib.sha256(BODY).hexdigest()
    assert signing.canonical_request("1793000000", "post", PATH, BODY) == (
        f"1793000000\nPOST\n{PATH}\n{body_hash}".encode())


def test_the_signature_is_hex_hmac_sha256_of_the_canonical_request() -> None:
    canonical = signing.canonical_request("1793000000", "POST", PATH, BODY)
    expected = hmac.new(b"secret-of-p1", canonical, hashlib.sha256).hexdigest()
    assert signing.sign("secret-of-p1", "1793000000", "POST", PATH, BODY) == expected


def test_signed_headers_carry_partner_whole_seconds_and_signature() -> None:
    sent = headers(now=NOW + 0.9)
    assert sent == {
        "X-Partner-Id": "P1",
        "X-Timestamp": "1793000000",
        "X-Signature": signing.sign("secret-of-p1", "1793000000", "POST", PATH, BODY),
    }


def test_a_signed_request_is_accepted_as_its_partner() -> None:
    assert signing.verify(headers("P2"), secret_for, "POST", PATH, BODY, NOW) == "P2"


def test_method_case_does_not_matter() -> None:
    sent = headers(method="post")
    assert signing.verify(sent, secret_for, "POST", PATH, BODY, NOW) == "P1"


def test_header_names_are_case_insensitive() -> None:
    sent = {name.lower(): value for name, value in headers().items()}
    assert signing.verify(sent, secret_for, "POST", PATH, BODY, NOW) == "P1"
    shouted = {name.upper(): value for name, value in headers().items()}
    assert signing.verify(shouted, secret_for, "POST", PATH, BODY, NOW) == "P1"


def test_an_upper_case_hex_signature_is_accepted() -> None:
    sent = headers()
    sent["X-Signature"] = sent["X-Signature"].upper()
    assert signing.verify(sent, secret_for, "POST", PATH, BODY, NOW) == "P1"


@pytest.mark.parametrize("dropped", ["X-Partner-Id", "X-Timestamp", "X-Signature"])
def test_a_missing_header_is_a_missing_signature(dropped: str) -> None:
    sent = headers()
    del sent[dropped]
    assert refusal(sent) == "missing_signature"


def test_an_empty_header_is_a_missing_signature() -> None:
    assert refusal({**headers(), "X-Signature": ""}) == "missing_signature"


def test_no_headers_at_all_is_a_missing_signature() -> None:
    assert refusal({}) == "missing_signature"


@pytest.mark.parametrize("timestamp", [
    "soon", "1793000000.0", "-1793000000", "+1793000000", " 1793000000", "1_793_000_000",
    "١٧٩٣٠٠٠٠٠٠", "9" * 5000,
])
def test_a_timestamp_that_is_not_whole_unix_seconds_is_refused(timestamp: str) -> None:
    sent = headers()
    sent["X-Timestamp"] = timestamp
    sent["X-Signature"] = signing.sign(SECRETS["P1"], timestamp, "POST", PATH, BODY)
    assert refusal(sent) == "bad_timestamp"


@pytest.mark.parametrize("age", [-MAX_SKEW_SECONDS, 0, MAX_SKEW_SECONDS])
def test_a_request_within_300_seconds_either_way_is_fresh(age: int) -> None:
    assert signing.verify(headers(), secret_for, "POST", PATH, BODY, NOW + age) == "P1"


@pytest.mark.parametrize("age", [-MAX_SKEW_SECONDS - 1, MAX_SKEW_SECONDS + 1, 86_400])
def test_a_request_older_or_newer_than_300_seconds_is_stale(age: int) -> None:
    assert refusal(headers(), now=NOW + age) == "stale_signature"


def test_an_unknown_partner_looks_like_a_bad_signature() -> None:
    forged = signing.signed_headers("P9", "guessed", "POST", PATH, BODY, NOW)
    assert refusal(forged) == "bad_signature"


def test_an_unknown_partner_is_refused_even_if_signed_with_the_timing_decoy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(signing, "_DECOY_SECRET", "known-decoy")
    forged = signing.signed_headers("P9", "known-decoy", "POST", PATH, BODY, NOW)
    assert refusal(forged) == "bad_signature"


def test_a_partner_whose_secret_lookup_gives_empty_is_refused() -> None:
    sent = signing.signed_headers("P1", "", "POST", PATH, BODY, NOW)
    with pytest.raises(SignatureError) as refused:
        signing.verify(sent, lambda _: "", "POST", PATH, BODY, NOW)
    assert refused.value.code == "bad_signature"


def test_a_signature_made_with_another_partners_secret_fails() -> None:
    sent = headers("P2")
    sent["X-Partner-Id"] = "P1"
    assert refusal(sent) == "bad_signature"


def test_a_body_changed_by_one_byte_fails() -> None:
    tampered = BODY.replace(b"S1", b"S2")
    assert refusal(headers(), body=tampered) == "bad_signature"


def test_a_different_query_string_fails() -> None:
    assert refusal(headers(), path="/api/v1/orders/o-1/complete?dry_run=1") == "bad_signature"
    assert refusal(headers(), path="/api/v1/orders/o-1/complete") == "bad_signature"


def test_a_different_method_fails() -> None:
    assert refusal(headers(method="POST"), method="PUT") == "bad_signature"


def test_a_moved_timestamp_fails() -> None:
    sent = headers()
    sent["X-Timestamp"] = str(int(NOW) + 1)
    assert refusal(sent) == "bad_signature"


def test_a_signature_with_non_ascii_characters_is_refused_not_crashed() -> None:
    assert refusal({**headers(), "X-Signature": "é" * 64}) == "bad_signature"


def test_secrets_are_fresh_and_long() -> None:
    first, second = signing.new_secret(), signing.new_secret()
    assert first != second
    assert len(first) >= 43


def test_a_fingerprint_names_a_secret_without_revealing_it() -> None:
    fingerprint = signing.secret_fingerprint("secret-of-p1")
    assert fingerprint == hashlib.sha256(b"secret-of-p1").hexdigest()[:16]
    assert len(fingerprint) == 16
    assert fingerprint != signing.secret_fingerprint("secret-of-p2")
    assert "secret" not in fingerprint


methods = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1,
                  max_size=10)
paths = st.text(max_size=200)
bodies = st.binary(max_size=2000)


@given(method=methods, path=paths, body=bodies,
       now=st.floats(min_value=0, max_value=4_000_000_000))
def test_any_request_round_trips(method: str, path: str, body: bytes, now: float) -> None:
    sent = signing.signed_headers("P1", SECRETS["P1"], method, path, body, now)
    assert signing.verify(sent, secret_for, method, path, body, now) == "P1"


@given(method=methods, path=paths, body=st.binary(min_size=1, max_size=2000), data=st.data())
def test_any_single_byte_change_of_the_body_fails(method: str, path: str, body: bytes,
                                                  data: st.DataObject) -> None:
    index = data.draw(st.integers(min_value=0, max_value=len(body) - 1))
    replacement = data.draw(st.integers(min_value=0, max_value=255).filter(
        lambda byte: byte != body[index]))
    tampered = body[:index] + bytes([replacement]) + body[index + 1:]
    sent = signing.signed_headers("P1", SECRETS["P1"], method, path, body, NOW)
    with pytest.raises(SignatureError) as refused:
        signing.verify(sent, secret_for, method, path, tampered, NOW)
    assert refused.value.code == "bad_signature"
