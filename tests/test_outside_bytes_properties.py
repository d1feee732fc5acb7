"""Property tests for every parser of bytes that come from outside the process.

Each parser is fed arbitrary bytes and real captures with bytes flipped, inserted, deleted,
truncated or concatenated. The properties: nothing escapes but the parser's own documented
error type, every such error says what was wrong, and what the parser accepts is really valid
(a stream parser also gets back in step after garbage and counts what it threw away).

The scanner's UART line assembler (device/lib/scanline.py) has no CPython counterpart, so it is
covered by the firmware tests under tests/device/, not here.

Hypothesis runs derandomized with no example database, so CI sees the same examples every run.
"""

from __future__ import annotations

import json
import re
import string
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agent.drivers.escpos import EscPosPrinter, status_from_replies
from agent.drivers.jbd import (
    Frame,
    JbdFrameError,
    JbdReading,
    JbdReassembler,
    encode_reply,
    parse_basic_info,
    parse_cell_voltages,
    parse_device_name,
)
from agent.drivers.printer import CorruptStatus, PrinterStatus
from agent.drivers.vedirect import MAX_BLOCK_BYTES, VEDirectParser, VEDirectReader, battery_reading, encode_block
from agent.errors import DriverTimeout
from kits import contract, tickets
from kits.contract import ContractError
from kits.manifest import _ROLE_BUSES, KitManifest, ManifestError, load_manifest, parse_manifest
from tests.testdata import data_dir, read_data

REPO = Path(__file__).resolve().parent.parent


def props(max_examples: int):
    return settings(max_examples=max_examples, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def assert_clear(exc: BaseException) -> str:
    """The error's text, after checking there is some beyond boilerplate."""
    text = str(exc)
    assert text.strip(), f"{type(exc).__name__} with an empty message"
    assert not text.rstrip().endswith(":"), f"{type(exc).__name__} message ends before saying what: {text!r}"
    return text


# ---------------------------------------------------------------- byte mutations

@st.composite
def mutated(draw, seed: bytes, max_ops: int = 6) -> bytes:
    """``seed`` after a few flips, insertions, deletions, truncations and duplications."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(("flip", "replace", "insert", "delete", "truncate", "duplicate")))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "replace" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[at:]
        elif op == "duplicate":
            data[at:at] = data[max(0, at - draw(st.integers(1, 40))) : at]
    return bytes(data)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


# ---------------------------------------------------------------- 1. MQTT contract payloads

_ORDER = contract.Order(
    id="5f0c2a9e-1b7d-4c3a-8e21-9d4f6a7b8c90", kit="stall", event="NM26", till="main", n=1, ts=1, currency="EUR",
    net=2291, tax=459, gross=2750, by="sam", payment="cash", oversold=["TEE-BLK-M"],
    lines=[contract.OrderLine(sku="TEE-BLK-M", qty=2, unit=1250, price_version=1, tax_bp=2000, net=2083, tax=417,
                              gross=2500),
           contract.OrderLine(sku="0400000000015", qty=1, unit=250, price_version=2, tax_bp=2000, net=208, tax=42,
                              gross=250)])


def _contract_examples() -> dict[str, list[dict]]:
    """Valid payloads, as JSON objects, for every channel (every telemetry kind, typed event data)."""
    env = {"boot": "ab12cd34", "seq": 7, "ts": 1_750_000_000_000}
    c = contract
    models = {
        "state": [c.State(boot="ab12", seq=0, ts=1, online=True, role="scanner", fw="1.2.0", config_version=3),
                  c.State(boot="ab12", seq=0, ts=1, online=False, role="agent", reason="lwt")],
        "telemetry": [
            c.BatteryTelemetry(**env, source="jbd", v=13.2, i=-1.5, p=-19.8, soc=81.0, ttg=240, alarm="low_soc",
                               remaining_ah=80.5, capacity_ah=100.0, cycles=12, temps_c=[21.5, 22.0],
                               protection=["cell_overvoltage"]),
            c.PrinterTelemetry(**env, online=True, paper="near_end", cover_open=False, error=False),
            c.LightTelemetry(**env, on=True, level=200, rgb=(255, 120, 0), scene="warm"),
            c.DeviceTelemetry(**env, uptime_s=3600, heap_free=81234, rssi=-61, outbox=2, dropped=0, scene="x",
                              scans=5),
        ],
        "event": [
            c.Event(**env, kind="checkin", data=c.Checkin(event="FEST25", ticket="K7QX2MBA", tier="GA",
                                                          verdict="already_admitted", hub_checked=True,
                                                          first_device="door-a").model_dump(exclude_none=True)),
            c.Event(**env, kind="readiness", data=c.KitReadiness(status="degraded", took_ms=420, problems=[
                c.ReadinessProblem(device="lr-power", severity="warning", what="battery at 55 %",
                                   fix="charge it")]).model_dump(exclude_none=True)),
            c.Event(**env, kind="summary", data=c.KitSummary(since=1, checkins=40, checkins_by_door={"door-a": 40},
                                                             labels_printed=3, energy_wh={"pack": 120.5}
                                                             ).model_dump(exclude_none=True)),
            c.Event(**env, kind="fault", data={"what": "printer not answering"}),
            c.Event(**env, kind="order", data=_ORDER.model_dump(exclude_none=True)),
            c.Event(**env, kind="refund", data=c.Refund(
                id="0b8e5a52-3c1d-4f7e-9a60-6f1d2b3c4d5e", order=_ORDER.id, kind="refund", kit="stall", event="NM26",
                till="main", n=2, ts=2, currency="EUR", net=1042, tax=208, gross=1250, by="sam",
                lines=[c.RefundLine(sku="TEE-BLK-M", qty=1, net=1042, tax=208, gross=1250)], reason="wrong size",
            ).model_dump(exclude_none=True)),
        ],
        "cmd": [c.Command(id="c-1", ts=1, expires=2, action="flash", args={"times": 2})],
        "ack": [c.Ack(**env, cmd_id="c-1", status="error", detail="no such light")],
        "config": [c.Config(version=4, ts=1, data={"scenes": [{"at": 0, "level": 10}]})],
        "receipt": [c.Receipt(boot="ab12", seqs=[(1, 3), (7, 7)], ts=1)],
        "claim": [c.Claim(id=9, event="FEST25", ticket="K7QX2MBA", ts=1)],
        "claimed": [c.Claimed(id=9, admit=False, first=c.FirstScan(device="door-a", ts=1)),
                    c.Claimed(id=9, admit=True)],
        "update": [c.UpdateOffer(id="r7-door-a", release="scanner-0.3.2", fw="scanner-0.3.2", host="10.42.0.1",
                                 port=8468, ts=1),
                   c.UpdateOffer(id="r8-door-a", release="scanner-0.3.1", fw="scanner-0.3.1", host="10.42.0.1",
                                 port=8468, rollback=True, ts=2)],
        "till": [c.TillScan(id=3, code="0400000000015", till="main", ts=1), c.TillScan(id=4, code="TEE-BLK-M", ts=2)],
        "tilled": [c.TillAnswer(id=3, ok=True, sku="0400000000015", qty=2),
                   c.TillAnswer(id=4, ok=False, reason="unknown_sku")],
    }
    return {ch: [json.loads(c.encode(m)) for m in ms] for ch, ms in models.items()}


CONTRACT_EXAMPLES = _contract_examples()
REASONS = {"oversize", "bad_json", "invalid"}


def test_every_channel_has_valid_examples():
    # A channel added to the contract without examples here would go untested by the mutations below.
    assert set(CONTRACT_EXAMPLES) == set(contract.CHANNELS)
    for channel, docs in CONTRACT_EXAMPLES.items():
        for doc in docs:
            assert contract.encode(contract.decode(channel, json.dumps(doc).encode())) == json.dumps(
                doc, separators=(",", ":")).encode()

json_scalars = (st.none() | st.booleans() | st.integers() | st.integers(-(2**70), 2**70) | st.floats()
                | st.text(max_size=20))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
# What a JSON encoder can send: no lone surrogates and no NaN or Infinity (each a JSON error of
# its own, tested apart).
clean_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
clean_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | clean_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(clean_text, inner, max_size=4),
    max_leaves=10,
)


def check_decode(channel: str, payload: bytes) -> object | ContractError:
    """decode() either accepts or raises ContractError with a known reason and a message; nothing else."""
    try:
        msg = contract.decode(channel, payload)
    except ContractError as exc:
        assert exc.reason in REASONS, exc.reason
        assert exc.detail.strip(), f"{exc.reason} with an empty detail"
        assert_clear(exc)
        return exc
    # The fleet stores an accepted payload as it came, for JSON readers that know no NaN or Infinity.
    json.loads(payload, parse_constant=_not_json)
    # And what is accepted can be sent on: agents and the fleet re-encode messages they decoded.
    again = contract.decode(channel, contract.encode(msg))
    assert contract.encode(again) == contract.encode(msg), (msg, again)
    return msg


def _not_json(token: str):
    raise AssertionError(f"decode() accepted {token}, which is not JSON")


@props(300)
@given(st.sampled_from(contract.CHANNELS), st.binary(max_size=300) | st.binary(min_size=4000, max_size=4200))
def test_contract_decode_random_bytes(channel, payload):
    result = check_decode(channel, payload)
    if len(payload) > contract.max_payload(channel):
        assert isinstance(result, ContractError) and result.reason == "oversize"


@props(400)
@given(st.sampled_from(contract.CHANNELS), json_values)
def test_contract_decode_random_json(channel, value):
    check_decode(channel, json.dumps(value).encode())


def _paths(value, here=()):
    """Every place in a JSON document: (path to the container, key or index)."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield here, k
            yield from _paths(v, here + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield here, i
            yield from _paths(v, here + (i,))


def _at(doc, path):
    for p in path:
        doc = doc[p]
    return doc


@props(600)
@given(st.data())
def test_contract_decode_valid_payload_with_one_field_mutated(data):
    channel = data.draw(st.sampled_from(contract.CHANNELS))
    doc = json.loads(json.dumps(data.draw(st.sampled_from(CONTRACT_EXAMPLES[channel]))))
    assert contract.decode(channel, json.dumps(doc).encode()) is not None  # the unmutated example is valid
    container_path, key = data.draw(st.sampled_from(list(_paths(doc))))
    container = _at(doc, container_path)
    op = data.draw(st.sampled_from(("replace", "delete", "add")))
    if op == "replace":
        container[key] = data.draw(clean_values)
    elif op == "delete":
        del container[key]
    elif isinstance(container, dict):
        container[data.draw(clean_text.filter(lambda k: k not in container))] = data.draw(clean_values)
    else:
        container.insert(key, data.draw(clean_values))
    result = check_decode(channel, json.dumps(doc).encode())
    if isinstance(result, ContractError):
        # The document is still well-formed JSON: only a field can be wrong.
        assert result.reason in ("invalid", "oversize"), result
        if result.reason == "invalid" and not container_path and op != "add":
            # A top-level field alone was changed: the error points at it (or at the event data it governs).
            assert str(key) in str(result) or (channel, key) in (("event", "kind"),), result


@props(300)
@given(st.data(), st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e999"]))
def test_contract_decode_non_finite_numbers(data, token):
    # Python's and pydantic's JSON parsers take these; JSON and the firmware's parser do not.
    channel = data.draw(st.sampled_from(contract.CHANNELS))
    doc = json.loads(json.dumps(data.draw(st.sampled_from(CONTRACT_EXAMPLES[channel]))))
    container_path, key = data.draw(st.sampled_from(list(_paths(doc))))
    _at(doc, container_path)[key] = "\x00here"
    payload = json.dumps(doc).replace('"\\u0000here"', token).encode()
    assert token.encode() in payload
    result = check_decode(channel, payload)
    if token in ("NaN", "Infinity", "-Infinity"):
        assert isinstance(result, ContractError) and result.reason == "bad_json", result
        assert "NaN or Infinity" in str(result)


@props(200)
@given(st.text(max_size=80) | st.builds(
    lambda kit, dev, ch, junk: f"popkit/v1/{kit}/{dev}/{ch}{junk}",
    st.from_regex(contract.ID_PATTERN, fullmatch=True) | st.text(max_size=10),
    st.from_regex(contract.ID_PATTERN, fullmatch=True) | st.sampled_from(["+", "#", "$SYS", ""]),
    st.sampled_from(contract.CHANNELS) | st.text(max_size=8),
    st.sampled_from(["", "/", "/x", "\n"])))
def test_contract_parse_topic(name):
    try:
        kit, device, channel = contract.parse_topic(name)
    except ContractError as exc:
        assert exc.reason == "unknown_topic"
        assert_clear(exc)
        return
    assert contract.topic(kit, device, channel) == name


# ---------------------------------------------------------------- 2. VE.Direct text frames

VE_DUMPS = ("vedirect/karioja_bmv700_fw0308.dump", "vedirect/karioja_bluesolar_mppt_fw123.dump",
            "vedirect/karioja_smartsolar_mppt_fw139.dump")


def _ve_blocks(name: str) -> list[bytes]:
    """The dump cut after every Checksum byte; the first piece (a partial block) is left out."""
    data = read_data(name)
    ends = [m.end() + 1 for m in re.finditer(rb"\r\nChecksum\t", data)]
    return [data[a:b] for a, b in zip(ends, ends[1:])]


VE_BLOCKS = [b for name in VE_DUMPS for b in _ve_blocks(name)[:200]]
# Blocks without an async HEX frame: one changed byte inside them must cost the block.
VE_TEXT_BLOCKS = [b for b in VE_BLOCKS if b":" not in b]


def ve_parse(data: bytes) -> tuple[VEDirectParser, list[dict[str, str]]]:
    parser = VEDirectParser()
    return parser, parser.feed(data)


def ve_decoded(block: bytes) -> dict[str, str]:
    """The block as a parser starting on its boundary returns it."""
    _, out = ve_parse(block)
    assert len(out) == 1, block
    return out[0]


ve_streams = (st.binary(max_size=600)
              | st.lists(st.sampled_from(VE_BLOCKS), min_size=1, max_size=3).map(b"".join).flatmap(mutated)
              | st.lists(st.sampled_from(VE_BLOCKS) | st.binary(max_size=40), max_size=5).map(b"".join))


@props(250)
@given(ve_streams, st.lists(st.integers(0, 10_000), max_size=8))
def test_vedirect_any_bytes_any_split(data, cuts):
    whole, blocks = ve_parse(data)
    parser, got = VEDirectParser(), []
    for piece in chunked(data, cuts):
        got += parser.feed(piece)
    # Never raises, and where the reads split the stream does not matter.
    assert got == blocks
    assert (parser.blocks_ok, parser.blocks_bad, parser.hex_frames) == (whole.blocks_ok, whole.blocks_bad,
                                                                        whole.hex_frames)
    assert whole.blocks_ok == len(blocks)
    for block in blocks:
        # A returned block is well formed: it encodes back into one that verifies to the same fields.
        assert block and all(k and k.isprintable() and v.isprintable() for k, v in block.items())
        assert ve_decoded(encode_block(list(block.items()))) == block


@props(150)
@given(st.integers(0, len(VE_BLOCKS) - 4),
       st.binary(min_size=1, max_size=1500) | st.sampled_from(VE_BLOCKS).flatmap(mutated))
def test_vedirect_resyncs_after_garbage(i, garbage):
    good = VE_BLOCKS[i : i + 4]
    parser, out = ve_parse(good[0] + garbage + b"".join(good[1:]))
    assert out[0] == ve_decoded(good[0])
    # The block after the garbage may be lost with it (its start is unknowable), but not silently,
    # and at most one more (an oversize reset can land on its Checksum tab): the last one is read.
    if ve_decoded(good[1]) not in out[1:]:
        assert parser.blocks_bad >= 1
    assert out[-1] == ve_decoded(good[3])


@props(200)
@given(st.sampled_from(VE_TEXT_BLOCKS), st.sampled_from(VE_TEXT_BLOCKS), st.data())
def test_vedirect_one_changed_byte_is_counted_bad(before, block, data):
    at = data.draw(st.integers(0, len(block) - 1))
    new = data.draw(st.integers(0, 255).filter(lambda b: b != block[at]))
    broken = block[:at] + bytes((new,)) + block[at + 1 :]
    after = VE_TEXT_BLOCKS[0]
    parser, out = ve_parse(before + broken + after + after)
    assert parser.blocks_bad >= 1
    assert out[0] == ve_decoded(before) and out[-1] == ve_decoded(after)
    assert len(out) < 4


VE_LABELS = ("V", "I", "P", "SOC", "TTG", "AR", "Alarm", "CE", "PID", "H1")
ve_values = (st.integers(-(10**12), 10**12).map(str)
             | st.builds(lambda sign, n: sign + "7" * n, st.sampled_from(["", "-"]), st.integers(1, 420))
             | st.sampled_from(["---", "ON", "OFF", "", "0x203", "1_000", " 12 "])
             | st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters=":"), max_size=12))


@props(400)
@given(st.lists(st.tuples(st.sampled_from(VE_LABELS), ve_values), min_size=1, max_size=8))
@example([("V", "12800"), ("I", "-1500"), ("AR", "15")])  # four alarms at once: longer than the contract's 40
@example([("V", "12800"), ("I", "-1500"), ("SOC", "2000")])  # a SOC over 100 %
@example([("V", "9" * 400), ("I", "0")])  # more digits than a float holds
def test_vedirect_every_verified_block_makes_valid_telemetry(fields):
    raw = encode_block(fields)
    if len(raw) > MAX_BLOCK_BYTES:
        parser, out = ve_parse(raw)  # longer than any real block: refused and counted, never buffered
        assert out == [] and parser.blocks_bad >= 1
        return
    block = ve_decoded(raw)
    reading = battery_reading(block)
    if reading is None:
        # Only a block without a plain battery voltage and current has no reading.
        assert not all(re.fullmatch(r"-?[0-9]{1,15}", block.get(k, "")) for k in ("V", "I")), block
        return
    # The agent sends exactly these fields as battery telemetry: the contract must take them.
    sent = {k: v for k, v in vars(reading).items() if v is not None}
    msg = contract.BatteryTelemetry(boot="ab12", seq=1, ts=1, source="vedirect", **sent)
    assert contract.decode("telemetry", contract.encode(msg)) == msg


class _BytesPort:
    def __init__(self, data: bytes) -> None:
        self._data = bytearray(data)

    def read(self, size: int = 1) -> bytes:
        out = bytes(self._data[:size])
        del self._data[:size]
        return out


@props(60)
@given(st.binary(max_size=300) | st.sampled_from(VE_BLOCKS).flatmap(mutated))
def test_vedirect_reader_gives_a_block_or_a_timeout(data):
    reader = VEDirectReader(_BytesPort(data))
    try:
        block = reader.read_block(timeout=0.01)
    except DriverTimeout as exc:
        assert "no verified VE.Direct block" in assert_clear(exc)
        return
    assert block == ve_parse(data)[1][0]


# ---------------------------------------------------------------- 3. JBD BMS frames

_HEX_RUN = re.compile(rb"(?i)dd(?:[:. ]?[0-9a-f]{2})+")


def _jbd_frames() -> list[bytes]:
    """Every checksum-valid reply frame written out as hex in the text captures."""
    frames: dict[bytes, None] = {}
    for path in sorted((data_dir() / "jbd_bms").iterdir()):
        if path.name.endswith(".log"):
            continue  # binary btsnoop logs: used whole, as messy streams, below
        for run in _HEX_RUN.findall(path.read_bytes()):
            for f in JbdReassembler().feed(bytes.fromhex(re.sub(rb"[:. ]", b"", run).decode())):
                frames[encode_reply(f.register, f.data, f.status)] = None
    return list(frames)


JBD_FRAMES = _jbd_frames()
JBD_BASIC = [f for f in JBD_FRAMES if f[1] == 0x03 and f[3] >= 23]
JBD_CELLS = [f for f in JBD_FRAMES if f[1] == 0x04]
JBD_LOGS = [read_data(f"jbd_bms/{name}") for name in ("esphomejbd_SP04S034_btsnoop_hci.log",
                                                       "esphomejbd_SP04S034_V1.3_ffaa_auth_btsnoop_hci.log")]
JBD_REASONS = {"length_overflow", "bad_end", "bad_checksum"}


def as_frame(raw: bytes) -> Frame:
    return Frame(register=raw[1], status=raw[2], data=raw[4:-3])


def test_jbd_seeds_are_there():
    assert len(JBD_FRAMES) >= 10 and JBD_BASIC and JBD_CELLS


def check_reassembler(r: JbdReassembler, frames: list[Frame]) -> None:
    assert r.frames_ok == len(frames)
    assert set(r.bad_reasons) <= JBD_REASONS and sum(r.bad_reasons.values()) == r.frames_bad
    if r.frames_bad:
        assert r.last_error and r.last_error.split(":")[0] in JBD_REASONS and r.last_error.split(": ", 1)[1]
    for f in frames:
        raw = encode_reply(f.register, f.data, f.status)  # accepted frames are frames: they re-encode
        assert JbdReassembler().feed(raw) == [f]


jbd_streams = (st.binary(max_size=300)
               | st.lists(st.sampled_from(JBD_FRAMES), min_size=1, max_size=4).map(b"".join).flatmap(mutated)
               | st.tuples(st.sampled_from(JBD_LOGS), st.integers(0, 60_000)).map(lambda t: t[0][t[1] : t[1] + 400]))


@props(300)
@given(jbd_streams, st.lists(st.integers(0, 10_000), max_size=8))
def test_jbd_any_bytes_any_split(data, cuts):
    whole = JbdReassembler()
    frames = whole.feed(data)
    r, got = JbdReassembler(), []
    for piece in chunked(data, cuts):
        got += r.feed(piece)
    assert got == frames
    assert (r.frames_ok, r.frames_bad, r.noise_bytes, r.pending) == (whole.frames_ok, whole.frames_bad,
                                                                      whole.noise_bytes, whole.pending)
    check_reassembler(whole, frames)


@props(200)
@given(st.binary(max_size=200) | st.sampled_from(JBD_FRAMES).flatmap(mutated), st.sampled_from(JBD_FRAMES))
def test_jbd_finds_a_frame_after_garbage(garbage, raw):
    r = JbdReassembler()
    # Trailing zeros finish any frame the garbage started, the way the next reply would.
    frames = r.feed(garbage + raw + bytes(90))
    assert as_frame(raw) in frames
    check_reassembler(r, frames)


@props(200)
@given(st.sampled_from(JBD_FRAMES), st.data())
def test_jbd_one_changed_byte_is_counted_bad(raw, data):
    # Byte 0 is the start byte (the frame becomes noise) and byte 1 the register, which the
    # checksum does not cover by design; every other byte is protected.
    at = data.draw(st.integers(2, len(raw) - 1))
    new = data.draw(st.integers(0, 255).filter(lambda b: b != raw[at]))
    broken = raw[:at] + bytes((new,)) + raw[at + 1 :]
    r = JbdReassembler()
    frames = r.feed(broken + bytes(90))
    assert frames == [] and r.frames_bad >= 1
    check_reassembler(r, frames)


def check_basic_info(data: bytes) -> None:
    try:
        info = parse_basic_info(data)
    except JbdFrameError as exc:
        assert "basic info" in assert_clear(exc)
        return
    assert len(info.temps_c) == data[22] and info.extra == data[23 + 2 * data[22] :]
    # The agent sends these fields as battery telemetry: the contract must take them.
    msg = contract.BatteryTelemetry(boot="ab12", seq=1, ts=1, **JbdReading(info).telemetry_fields())
    assert contract.decode("telemetry", contract.encode(msg)) == msg


@props(300)
@given(st.binary(max_size=80) | st.sampled_from([f[4:-3] for f in JBD_BASIC]).flatmap(mutated))
def test_jbd_basic_info_data(data):
    check_basic_info(data)


@props(150)
@given(st.binary(max_size=80) | st.sampled_from([f[4:-3] for f in JBD_CELLS]).flatmap(mutated))
def test_jbd_cell_voltages_and_name(data):
    try:
        cells = parse_cell_voltages(data)
    except JbdFrameError as exc:
        assert len(data) % 2 and str(len(data)) in assert_clear(exc)
    else:
        assert len(cells) == len(data) // 2 and all(0 <= v <= 65.535 for v in cells)
    assert len(parse_device_name(data)) == len(data)


# ---------------------------------------------------------------- 4. ESC/POS status bytes

def _escpos_seeds() -> list[bytes]:
    text = read_data("escpos/issue_dle_eot_status_replies.hex").decode("ascii")
    captured = bytes(int(h, 16) for line in text.splitlines() if line.startswith("RX ") for h in line.split()[1:])
    # Host-side ESC/POS streams stand in for a wrong device (or our own echo) answering.
    host = [read_data(f"escpos/{p.name}")[:64] for p in sorted((data_dir() / "escpos").glob("*.bin"))]
    return [captured * 2, bytes((0x16, 0x12, 0x12, 0x72)), bytes((0x16, 0x12, 0x12))] + host


ESCPOS_SEEDS = _escpos_seeds()


class _ScriptedPrinterPort:
    """Answers each read with the next scripted byte; then silence, as an unplugged printer."""

    def __init__(self, replies: bytes) -> None:
        self._replies = bytearray(replies)

    def write(self, data: bytes) -> int:
        return len(data)

    def read(self, size: int = 1) -> bytes:
        out = bytes(self._replies[:size])
        del self._replies[:size]
        return out


def _fixed_bits_ok(byte: int) -> bool:
    return byte & 0x93 == 0x12  # Epson: bits 1 and 4 set, 0 and 7 clear


def expected_status(b1: int, b2: int, b3: int, b4: int | None) -> PrinterStatus:
    """The TM-T20 manual's bit meanings, written out independently of the driver."""
    if b4 is None:
        paper = "out" if b2 & 0x20 else "unknown"
    else:
        paper = "out" if b4 & 0x60 else "near_end" if b4 & 0x0C else "ok"
    return PrinterStatus(online=not b1 & 0x08, paper=paper, cover_open=bool(b2 & 0x04),
                         error=bool(b2 & 0x40 or b3 & 0x6C))


# Replies with the fixed bits right and every variable bit free, so the bit meanings get checked.
status_bytes = st.lists(st.integers(0, 255).map(lambda b: b & ~0x81 | 0x12), max_size=4).map(bytes)


@props(300)
@given(st.binary(max_size=6) | status_bytes | st.sampled_from(ESCPOS_SEEDS)
       | st.sampled_from(ESCPOS_SEEDS).flatmap(mutated))
def test_escpos_status_from_any_reply_bytes(replies):
    printer = EscPosPrinter(_ScriptedPrinterPort(replies), status_timeout=0.0)
    got = replies[:4]
    try:
        status = printer.status()
    except DriverTimeout as exc:
        assert len(got) < 3 and f"DLE EOT {len(got) + 1}" in assert_clear(exc)
        return
    except CorruptStatus as exc:
        bad = next(n for n, b in enumerate(got, 1) if not _fixed_bits_ok(b))
        assert f"DLE EOT {bad} reply 0x{got[bad - 1]:02X}" in assert_clear(exc)
        assert printer.corrupt_replies == 1
        return
    assert all(_fixed_bits_ok(b) for b in got)
    assert status == expected_status(got[0], got[1], got[2], got[3] if len(got) > 3 else None)


@props(150)
@given(st.lists(st.integers(-300, 600), min_size=3, max_size=4))
def test_escpos_status_from_replies_refuses_non_bytes(values):
    replies = dict(enumerate(values, 1))
    try:
        status_from_replies(replies)
    except CorruptStatus as exc:
        assert re.search(r"DLE EOT [1-4] reply", assert_clear(exc))
        assert not all(0 <= v <= 255 and _fixed_bits_ok(v) for v in values)
    else:
        assert all(0 <= v <= 255 and _fixed_bits_ok(v) for v in values)


# ---------------------------------------------------------------- 5. scanner lines
# Only the firmware parses them (device/lib/scanline.py, MicroPython): see tests/device/.


# ---------------------------------------------------------------- 6. tickets

TICKET_KEY = tickets.EventKey("FEST25", bytes(range(32)))
NOW = 1_750_000_000
GOOD_TICKET = tickets.issue(TICKET_KEY, "FEST25", "K7QX2MBA", "GA", NOW - 3600, NOW + 86400)
ticket_alphabet = string.ascii_uppercase + string.digits + ":-" + "pk a\x00\xe9"


def check_ticket_error(exc: tickets.TicketError) -> None:
    assert exc.verdict in tickets.VERDICTS, type(exc)
    assert_clear(exc)


@props(300)
@given(st.text(ticket_alphabet, max_size=90) | st.text(max_size=90) | st.binary(max_size=90)
       | st.sampled_from([GOOD_TICKET, GOOD_TICKET.encode()]).flatmap(
           lambda t: mutated(t if isinstance(t, bytes) else t.encode()).map(
               lambda b: b.decode("latin-1") if isinstance(t, str) else b)))
def test_ticket_parse(payload):
    try:
        t = tickets.parse(payload)
    except tickets.MalformedTicket as exc:
        check_ticket_error(exc)
        assert exc.verdict == "malformed"
        return
    text = payload.decode("ascii") if isinstance(payload, bytes) else payload
    assert t.payload == text and text.split(":")[1:4] == [t.event, t.ticket_id, t.tier]
    assert 0 <= t.not_before and t.not_after % 60 == 0


@props(300)
@given(st.sampled_from([GOOD_TICKET]).map(str.encode).flatmap(mutated), st.integers(NOW - 10**6, NOW + 10**6))
def test_ticket_verify_mutated(payload, now):
    try:
        t = tickets.verify(TICKET_KEY, payload, now)
    except tickets.TicketError as exc:
        check_ticket_error(exc)
        return
    # 80 bits of MAC: a changed ticket is never admitted.
    assert t.payload == GOOD_TICKET and payload == GOOD_TICKET.encode()


MAX_MINUTE = 36**7 - 1


@props(300)
@given(st.integers(0, MAX_MINUTE - 1).flatmap(lambda nbf: st.tuples(st.just(nbf), st.integers(nbf + 1, MAX_MINUTE))),
       st.integers(0, (MAX_MINUTE + 10) * 60), st.integers(0, 3600))
@example((MAX_MINUTE - 1, MAX_MINUTE), NOW, 0)  # valid in the year 150000: not yet valid, said in words
@example((0, MAX_MINUTE), MAX_MINUTE * 60, 0)
def test_ticket_verify_window(window, now, leeway):
    nbf, naf = window
    payload = tickets.issue(TICKET_KEY, "FEST25", "A1", "VIP", nbf * 60, naf * 60)
    try:
        t = tickets.verify(TICKET_KEY, payload, now, leeway=leeway)
    except (tickets.NotYetValid, tickets.Expired) as exc:
        check_ticket_error(exc)
        assert isinstance(exc, tickets.NotYetValid) == (now < nbf * 60 - leeway)
        assert isinstance(exc, tickets.Expired) == (now >= naf * 60 + leeway)
        return
    assert nbf * 60 - leeway <= now < naf * 60 + leeway
    assert (t.not_before, t.not_after) == (nbf * 60, naf * 60)


@props(150)
@given(st.text(max_size=200) | json_values.map(json.dumps) | st.builds(
    lambda fmt, event, key, created: json.dumps({"format": fmt, "event": event, "key": key, "created": created}),
    st.sampled_from([tickets.KEY_FILE_FORMAT, "other"]) | json_scalars,
    st.sampled_from(["FEST25"]) | json_scalars,
    st.sampled_from([bytes(32).hex(), bytes(31).hex(), "zz"]) | json_scalars,
    json_scalars))
@example('{"format": "popkit-event-key/1", "event": "FEST25"}')  # no key at all
@example("[]")
@example("[" * 100_000)  # deeper than json.loads recurses
def test_ticket_key_file(text):
    try:
        key = tickets.EventKey.from_json(text, where="k.key")
    except tickets.KeyFileError as exc:
        msg = assert_clear(exc)
        assert msg.startswith("k.key is not a PopKit event key: "), msg
        detail = msg.split(": ", 1)[1]
        # Python's own words for a missing key or a wrong type say nothing to the crew.
        assert not re.fullmatch(r"'[^']*'", detail) and "has no attribute" not in detail, msg
        return
    assert len(key.secret) == tickets.KEY_BYTES and json.loads(text)["format"] == tickets.KEY_FILE_FORMAT
    assert re.fullmatch(tickets.EVENT_PATTERN, key.event), key


# ---------------------------------------------------------------- 7. kit manifests

EXAMPLE_MANIFESTS = {p.name: p.read_text() for p in sorted((REPO / "kits" / "examples").glob("*.toml"))}

toml_literals = st.one_of(
    clean_text.map(json.dumps),  # JSON strings are TOML basic strings
    st.integers(-(2**63), 2**63 - 1).map(str),
    st.integers(0, 40).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(["true", "false", "nan", "inf", "[]", "{}", "[1, 2]", "{ min_soc = 50 }", "{ safety = 1 }",
                     "2026-11-21T19:00:00", "2026-11-21T19:00:00Z", "2026-11-21", "19:00:00", '"gpio"',
                     '"gpio:17"', '"gpio:40"', '"gpio:\u00b2"', '"gpio:\u0661\u0662"', '"serial:dev"',
                     '"ble:AA:BB:CC:DD:EE:FF"', '"ble:zz"', '"none"', '""', '"panel"', '"light"', '"printer"']),
    st.builds(lambda kind, rest: json.dumps(f"{kind}{rest}"), st.sampled_from(["gpio:", "serial:", "ble:", ""]),
              clean_text),
)


@st.composite
def mutated_manifest(draw) -> str:
    lines = draw(st.sampled_from(list(EXAMPLE_MANIFESTS.values()))).splitlines()
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(("value", "value", "drop", "insert", "text")))
        if op == "value" and "=" in lines[at]:
            lines[at] = lines[at].split("=", 1)[0] + "= " + draw(toml_literals)
        elif op == "drop":
            del lines[at]
        elif op == "insert":
            key = draw(st.sampled_from(["id", "name", "agent", "role", "bus", "pins", "expect", "telemetry_s",
                                        "model", "active_high", "doors_open", "ends", "extra"]))
            lines.insert(at, f"{key} = {draw(toml_literals)}")
        else:
            lines[at] = draw(st.text(max_size=30))
        if not lines:
            break
    return "\n".join(lines) + "\n"


def check_manifest(text: str, source: str = "kit.toml") -> None:
    try:
        m = parse_manifest(text, source)
    except ManifestError as exc:
        msg = assert_clear(exc)
        assert msg.startswith(f"{source}: ") and msg[len(source) + 2 :].strip(), msg
        return
    # What loads is usable: every bus is one the agent can drive for that role.
    assert isinstance(m, KitManifest)
    for d in m.all_devices():
        assert d.bus_kind in _ROLE_BUSES[d.role], d
        if d.bus_kind == "gpio" and d.role != "panel":
            assert re.fullmatch(r"[0-9]+", d.address) and 0 <= int(d.address) <= 27, d
        if d.bus_kind == "serial":
            assert d.address.startswith("/"), d
    assert len({d.id for d in m.all_devices()}) == len(m.all_devices())


@props(400)
@given(mutated_manifest())
@example('id = "k"\nname = "n"\n[[devices]]\nid = "r"\nrole = "light"\nbus = "gpio:\u00b2"\n')  # a digit int() refuses
@example('id = "k"\nname = "n"\n[[devices]]\nid = "r"\nrole = "light"\nbus = "gpio:\u0661\u0662"\n')  # Arabic-Indic
@example("id = " + "[" * 5000)  # deeper than the TOML parser can recurse
def test_manifest_mutated_examples(text):
    check_manifest(text)


@props(200)
@given(st.text(max_size=200))
def test_manifest_random_text(text):
    check_manifest(text)


@props(100)
@given(st.binary(max_size=200) | st.sampled_from([t.encode() for t in EXAMPLE_MANIFESTS.values()]).flatmap(mutated))
def test_manifest_file_of_any_bytes(raw):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "kit.toml"
        path.write_bytes(raw)
        try:
            load_manifest(path)
        except ManifestError as exc:
            msg = assert_clear(exc)
            assert msg.startswith(f"{path}: "), msg


# ---------------------------------------------------------------- scanner lines (device/lib/scanline.py)

def _scanline():
    """The firmware's own LineAssembler, loaded in CPython: its only MicroPython import is const()."""
    import importlib.util
    import sys
    import types

    shim = types.ModuleType("micropython")
    shim.const = lambda x: x
    spec = importlib.util.spec_from_file_location("fw_scanline", REPO / "device" / "lib" / "scanline.py")
    mod = importlib.util.module_from_spec(spec)
    had = sys.modules.get("micropython")
    sys.modules["micropython"] = shim  # for this import only: nothing else in CPython sees it
    try:
        spec.loader.exec_module(mod)
    finally:
        if had is None:
            del sys.modules["micropython"]
        else:
            sys.modules["micropython"] = had
    return mod


_SCANLINE = _scanline()


@props(300)
@given(chunks=st.lists(st.binary(max_size=300), max_size=12), max_line=st.integers(1, 160))
def test_scanner_lines_any_uart_bytes_give_printable_lines_no_longer_than_the_buffer(chunks, max_line):
    asm = _SCANLINE.LineAssembler(max_line)
    lines = []
    for c in chunks:
        lines += asm.feed(c)
    asm.drop_partial()
    assert all(0 < len(ln) <= max_line and all(32 <= b <= 126 for b in ln) for ln in lines)
    assert asm.lines == len(lines)


@props(300)
@given(noise=st.binary(max_size=200), code=st.text(st.characters(min_codepoint=32, max_codepoint=126),
                                                   min_size=1, max_size=79),
       cuts=st.lists(st.integers(0, 90), max_size=4), end=st.sampled_from([b"\r", b"\n", b"\r\n"]))
def test_scanner_lines_a_code_after_any_noise_and_split_anywhere_arrives_whole(noise, code, cuts, end):
    asm = _SCANLINE.LineAssembler()
    asm.feed(noise + b"\r")  # whatever was on the line before, ended
    data = code.encode() + end
    got, at = [], 0
    for cut in sorted(set(c for c in cuts if c < len(data))) + [len(data)]:
        got += asm.feed(data[at:cut])
        at = cut
    assert got == [code.encode()]
