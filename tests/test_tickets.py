"""Signed tickets on the issuing side: the format, the reference verifier, and `popkit tickets issue`."""

from __future__ import annotations

import csv
import os
import stat
from datetime import datetime, timedelta, timezone

import pytest

from kits import tickets
from kits.tickets import (BadSignature, EventKey, Expired, KeyFileError, MalformedTicket, NotYetValid,
                          TicketError, WrongEvent, check, issue, parse, verify)
from popkit.cli import main

T0 = datetime(2025, 7, 12, 16, 0, tzinfo=timezone.utc)  # doors
T1 = datetime(2025, 7, 13, 2, 0, tzinfo=timezone.utc)  # curfew
DURING = datetime(2025, 7, 12, 20, 30, tzinfo=timezone.utc)
QR_ALPHANUMERIC = set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:")


@pytest.fixture
def key() -> EventKey:
    return EventKey.generate("FEST25")


def test_issue_ticket_verifies_with_its_fields(key):
    payload = issue(key, "FEST25", "K7QX2MBA", "VIP", T0, T1)
    t = verify(key, payload, DURING)
    assert (t.event, t.ticket_id, t.tier) == ("FEST25", "K7QX2MBA", "VIP")
    assert (t.not_before, t.not_after) == (T0.timestamp(), T1.timestamp())
    assert payload.startswith("PK1:FEST25:K7QX2MBA:VIP:")
    assert check(key, payload, DURING) == "admitted"


DOC_VECTOR = "PK1:FEST25:K7QX2MBA:GA:HDZ6O:HDZNC:BWQ4NTKPF2BZ3MM5"  # docs/tickets.md, key 00..1f


def test_issue_matches_the_documented_test_vector():
    assert issue(bytes(range(32)), "FEST25", "K7QX2MBA", "GA", T0, datetime(2025, 7, 13, 2, tzinfo=timezone.utc)) \
        == DOC_VECTOR
    assert check(bytes(range(32)), DOC_VECTOR, DURING, event="FEST25") == "admitted"


def test_issue_payload_is_qr_alphanumeric_and_short(key):
    k16 = EventKey.generate("E" * 16)
    longest = issue(k16, "E" * 16, "T" * 16, "TIER" * 2, T0, datetime(9999, 1, 1, tzinfo=timezone.utc))
    typical = issue(key, "FEST25", "K7QX2MBA", "GA", T0, T1)
    assert set(typical) <= QR_ALPHANUMERIC and set(longest) <= QR_ALPHANUMERIC
    assert len(typical) == 51
    assert len(longest) <= tickets.MAX_PAYLOAD
    segno = pytest.importorskip("segno")
    assert segno.make(typical, error="m").mode == "alphanumeric"
    assert segno.make(typical, error="m", boost_error=False).version <= 3  # 29x29 modules
    assert segno.make(longest, error="m", boost_error=False).version <= 4


def test_issue_widens_window_to_whole_minutes(key):
    t = parse(issue(key, "FEST25", "A1", "GA", T0 + timedelta(seconds=59), T1 + timedelta(seconds=1)))
    assert t.not_before == T0.timestamp()
    assert t.not_after == (T1 + timedelta(minutes=1)).timestamp()


@pytest.mark.parametrize("field, value", [("event", "fest25"), ("event", "-X"), ("ticket", "AB-1"),
                                          ("ticket", "X" * 17), ("tier", "VIP:1"), ("tier", "")])
def test_issue_refuses_fields_outside_the_format(key, field, value):
    args = dict(event="FEST25", ticket_id="A1", tier="GA")
    args[{"event": "event", "ticket": "ticket_id", "tier": "tier"}[field]] = value
    with pytest.raises(TicketError, match="must match"):
        issue(key.secret, not_before=T0, not_after=T1, **args)


def test_issue_refuses_empty_window_naive_time_and_other_events_key(key):
    with pytest.raises(TicketError, match="window is empty"):
        issue(key, "FEST25", "A1", "GA", T1, T0)
    with pytest.raises(TicketError, match="no time zone"):
        issue(key, "FEST25", "A1", "GA", T0.replace(tzinfo=None), T1)
    with pytest.raises(WrongEvent, match="key is for event FEST25, not OTHER"):
        issue(key, "OTHER", "A1", "GA", T0, T1)


def test_event_key_repr_does_not_show_the_secret(key):
    assert key.secret.hex() not in repr(key) and str(list(key.secret)) not in repr(key)


def _tamper(payload: str, index: int) -> str:
    c = payload[index]
    return payload[:index] + ("B" if c == "A" else "A") + payload[index + 1:]


def test_verify_refuses_any_altered_character(key):
    payload = issue(key, "FEST25", "K7QX2MBA", "GA", T0, T1)
    for i, c in enumerate(payload):
        if c == ":" or i < len("PK1:FEST25:"):
            continue
        with pytest.raises(BadSignature, match="signature does not match"):
            verify(key, _tamper(payload, i), DURING)


def test_verify_refuses_upgraded_tier_and_extended_window(key):
    payload = issue(key, "FEST25", "K7QX2MBA", "GA", T0, T1)
    parts = payload.split(":")
    vip = ":".join(parts[:3] + ["VIP"] + parts[4:])
    longer = ":".join(parts[:5] + ["ZZZZZ"] + parts[6:])
    assert check(key, vip, DURING) == check(key, longer, DURING) == "bad_signature"


def test_verify_refuses_other_key_and_other_event(key):
    payload = issue(key, "FEST25", "K7QX2MBA", "GA", T0, T1)
    with pytest.raises(BadSignature):
        verify(EventKey.generate("FEST25"), payload, DURING)
    with pytest.raises(WrongEvent, match="ticket is for event FEST25, this scanner checks FEST26"):
        verify(EventKey.generate("FEST26"), payload, DURING)


def test_verify_window_edges_and_leeway(key):
    payload = issue(key, "FEST25", "K7QX2MBA", "GA", T0, T1)
    s0, s1 = T0.timestamp(), T1.timestamp()
    with pytest.raises(NotYetValid, match="valid from 2025-07-12T16:00:00Z"):
        verify(key, payload, s0 - 1)
    verify(key, payload, s0)
    verify(key, payload, s1 - 1)
    with pytest.raises(Expired, match="expired at 2025-07-13T02:00:00Z"):
        verify(key, payload, s1)
    assert check(key, payload, s0 - 60, leeway=60) == check(key, payload, s1 + 59, leeway=60) == "admitted"


@pytest.mark.parametrize("payload, message", [
    ("", "no PK prefix"),
    ("https://example.com/ticket/123", "no PK prefix"),
    ("PK2:FEST25:A:GA:1:2:AAAAAAAAAAAAAAAA", "unsupported ticket format 'PK2'"),
    ("PK1:FEST25:A:GA:1:2", "do not match"),
    ("PK1:fest25:A:GA:1:2:AAAAAAAAAAAAAAAA", "do not match"),
    ("PK1:FEST25:A:GA:1:2:AAAAAAAAAAAAAAA1", "do not match"),  # '1' is not base32
    ("PK1:FEST25:A:GA:1:2:AAAAAAAAAAAAAAAA\r", "do not match"),
    ("PK1:" + "X" * 90, "longer than any ticket"),
    ("PK1:FEST25:A:GA:1:2:AAAAAAAAAAAAAAAA".encode() + b"\xff", "not ASCII"),
])
def test_verify_names_malformed_payloads(key, payload, message):
    with pytest.raises(MalformedTicket, match=message):
        verify(key, payload, DURING)
    assert check(key, payload, DURING) == "malformed"


def test_ticket_errors_are_value_errors_with_the_scanners_verdict():
    assert issubclass(TicketError, ValueError)
    verdicts = {cls.verdict for cls in (MalformedTicket, WrongEvent, BadSignature, NotYetValid, Expired)}
    assert verdicts <= set(tickets.VERDICTS) and len(verdicts) == 5


# ---------------------------------------------------------------- popkit tickets issue

def _issue(*extra: str) -> int:
    return main(["tickets", "issue", *extra])


def test_cli_issue_writes_csv_and_a_private_key_file(tmp_path, capsys):
    out, key_file = tmp_path / "fest25.csv", tmp_path / "keys" / "FEST25.key"
    assert _issue("--event", "fest25", "--count", "25", "--out", str(out), "--tier", "vip", "--key-file",
                  str(key_file), "--valid-from", "2025-07-12T18:00+02:00",
                  "--valid-until", "2025-07-13T04:00+02:00") == 0
    assert "25 VIP tickets for FEST25" in capsys.readouterr().out
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    key = EventKey.load(key_file)
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 25 and len({r["ticket_id"] for r in rows}) == 25
    assert list(rows[0]) == ["ticket_id", "tier", "payload"]
    for r in rows:
        t = verify(key, r["payload"], DURING)
        assert (t.ticket_id, t.tier) == (r["ticket_id"], "VIP")
        assert (t.not_before, t.not_after) == (T0.timestamp(), T1.timestamp())


def test_cli_issue_defaults_key_under_var_keys_and_reuses_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert _issue("--event", "FEST25", "--count", "2", "--out", "ga.csv") == 0
    assert "created in var/keys/FEST25.key" in capsys.readouterr().out
    before = (tmp_path / "var/keys/FEST25.key").read_bytes()
    assert _issue("--event", "FEST25", "--count", "2", "--out", "vip.csv", "--tier", "VIP") == 0
    assert "reused from var/keys/FEST25.key" in capsys.readouterr().out
    assert (tmp_path / "var/keys/FEST25.key").read_bytes() == before
    key = EventKey.load(tmp_path / "var/keys/FEST25.key")
    for name in ("ga.csv", "vip.csv"):
        with open(name, newline="") as f:
            for r in csv.DictReader(f):
                assert check(key, r["payload"], datetime.now(timezone.utc)) == "admitted"


def test_cli_issue_refuses_another_events_key_file(tmp_path, capsys):
    key_file = tmp_path / "k.key"
    EventKey.generate("FEST24").save(key_file)
    before = key_file.read_bytes()
    assert _issue("--event", "FEST25", "--count", "1", "--out", str(tmp_path / "t.csv"),
                  "--key-file", str(key_file)) == 2
    assert "holds the key for event 'FEST24', not 'FEST25'" in capsys.readouterr().err
    assert key_file.read_bytes() == before and not (tmp_path / "t.csv").exists()


def test_key_file_is_never_overwritten(tmp_path):
    key_file = tmp_path / "FEST25.key"
    EventKey.generate("FEST25").save(key_file)
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        EventKey.generate("FEST25").save(key_file)


def test_cli_issue_refuses_a_key_file_others_can_read(tmp_path, capsys):
    key_file = tmp_path / "FEST25.key"
    EventKey.generate("FEST25").save(key_file)
    os.chmod(key_file, 0o644)
    assert _issue("--event", "FEST25", "--count", "1", "--out", str(tmp_path / "t.csv"),
                  "--key-file", str(key_file)) == 2
    assert "chmod 600" in capsys.readouterr().err


def test_cli_issue_refuses_a_corrupt_key_file(tmp_path, capsys):
    key_file = tmp_path / "FEST25.key"
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b'{"format": "popkit-event-key/1", "event": "FEST25", "key": "abcd"}')
    os.close(fd)
    assert _issue("--event", "FEST25", "--count", "1", "--out", str(tmp_path / "t.csv"),
                  "--key-file", str(key_file)) == 2
    assert "is not a PopKit event key: key is 2 bytes" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--valid-from", "2025-07-12T18:00"], "has no UTC offset"),
    (["--valid-from", "tomorrow"], "is not an ISO 8601 time"),
    (["--valid-from", "2025-07-13T00:00Z", "--valid-until", "2025-07-12T00:00Z"], "window is empty"),
    (["--count", "0"], "at least 1"),
])
def test_cli_issue_explains_bad_arguments(tmp_path, capsys, flags, message):
    args = ["--event", "FEST25", "--count", "1", "--out", str(tmp_path / "t.csv"), "--key-file", str(tmp_path / "k")]
    assert _issue(*args, *flags) == 2
    assert message in capsys.readouterr().err


def test_cli_issue_never_overwrites_an_issued_list(tmp_path, capsys):
    out = tmp_path / "t.csv"
    out.write_text("ticket_id,tier,payload\n")
    assert _issue("--event", "FEST25", "--count", "1", "--out", str(out), "--key-file", str(tmp_path / "k")) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert not (tmp_path / "k").exists()


def test_cli_issue_qr_sheet_is_a_png(tmp_path):
    pytest.importorskip("segno")
    sheet = tmp_path / "sheet.png"
    assert _issue("--event", "FEST25", "--count", "7", "--out", str(tmp_path / "t.csv"), "--key-file",
                  str(tmp_path / "k"), "--qr-sheet", str(sheet)) == 0
    png = sheet.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (5 * 37 * 3, 2 * 37 * 3)  # 5 per row, version 3 (29 modules) + quiet zone
