"""VE.Direct parser and reader against real captures (tests/testdata.py locates them)."""

from __future__ import annotations

import io
import random
import re

import pytest

from agent.drivers.vedirect import (
    MAX_BLOCK_BYTES,
    BatteryReading,
    VEDirectParser,
    VEDirectReader,
    battery_reading,
    encode_block,
)
from agent.errors import DriverTimeout
from tests.testdata import read_data

BMV = "vedirect/karioja_bmv700_fw0308.dump"
BLUESOLAR = "vedirect/karioja_bluesolar_mppt_fw123.dump"
SMARTSOLAR = "vedirect/karioja_smartsolar_mppt_fw139.dump"

# SOURCES.md counts blocks with a plain byte sum from one Checksum byte to the
# next: 906 / 240 / 492. It also says HEX frames sit in the MPPT streams and
# break that plain sum for the blocks they land in (7 in the BlueSolar dump; in
# the SmartSolar dump both frames sit in one gap, so one block). A parser that
# strips HEX frames, as the protocol requires, verifies those blocks too.
EXPECTED = {
    # file: (plain-sum count from SOURCES.md, blocks hit by HEX frames, HEX frames)
    BMV: (906, 0, 0),
    BLUESOLAR: (240, 7, 7),
    SMARTSOLAR: (492, 1, 2),
}


def parse_all(data: bytes) -> tuple[VEDirectParser, list[dict[str, str]]]:
    parser = VEDirectParser()
    return parser, parser.feed(data)


def plain_sum_segments(data: bytes) -> list[bytes]:
    """Independent cross-check: split after every Checksum byte, no HEX handling."""
    segments, start = [], 0
    for match in re.finditer(rb"\r\nChecksum\t", data):
        end = match.end() + 1
        segments.append(data[start:end])
        start = end
    return segments


@pytest.mark.parametrize("name", EXPECTED)
def test_sources_plain_sum_counts_hold(name: str) -> None:
    plain, hex_blocks, _ = EXPECTED[name]
    segments = plain_sum_segments(read_data(name))
    assert sum(1 for s in segments if sum(s) % 256 == 0) == plain
    with_hex = [s for s in segments if re.search(rb":[0-9A-F]+\n", s)]
    assert len(with_hex) == hex_blocks


@pytest.mark.parametrize("name", EXPECTED)
def test_dump_block_counts(name: str) -> None:
    plain, hex_blocks, hex_frames = EXPECTED[name]
    parser, blocks = parse_all(read_data(name))
    assert len(blocks) == parser.blocks_ok == plain + hex_blocks
    assert parser.blocks_bad == 0  # the partial first block of the MPPT dumps is dropped, not "bad"
    assert parser.hex_frames == hex_frames
    for block in blocks:
        assert "Checksum" not in block
        assert all(label and value is not None for label, value in block.items())


def test_dump_counts_measured() -> None:
    # The plain numbers, for the record: 906, 247, 493.
    assert [parse_all(read_data(n))[0].blocks_ok for n in (BMV, BLUESOLAR, SMARTSOLAR)] == [906, 247, 493]


def test_bmv_main_and_history_blocks_alternate() -> None:
    _, blocks = parse_all(read_data(BMV))
    main = blocks[0::2]
    history = blocks[1::2]
    assert len(main) == 453 and len(history) == 453
    assert all(b["PID"] == "0x203" and b["BMV"] == "700" and b["FW"] == "0308" for b in main)
    assert all("H1" in b and "H18" in b and "V" not in b for b in history)
    assert all(battery_reading(b) is None for b in history)


def test_bmv_first_reading() -> None:
    _, blocks = parse_all(read_data(BMV))
    assert battery_reading(blocks[0]) == BatteryReading(
        v=12.065, i=-7.625, p=-92.0, soc=83.9, ttg=942, alarm=None
    )


def test_bmv_readings_sane() -> None:
    _, blocks = parse_all(read_data(BMV))
    readings = [r for r in map(battery_reading, blocks) if r is not None]
    assert len(readings) == 453
    for r in readings:
        assert 11.0 < r.v < 15.0
        assert -50.0 < r.i < 50.0
        assert r.soc is not None and 0.0 <= r.soc <= 100.0
        assert r.ttg is not None and (r.ttg == -1 or r.ttg >= 0)
        assert r.p is not None and abs(r.p - r.v * r.i) < 2.0  # P is rounded V*I
    # Discharging the whole time: SOC never rises.
    socs = [r.soc for r in readings]
    assert socs == sorted(socs, reverse=True)


@pytest.mark.parametrize("name,pid", [(BLUESOLAR, "0xA042"), (SMARTSOLAR, "0xA05F")])
def test_mppt_readings(name: str, pid: str) -> None:
    _, blocks = parse_all(read_data(name))
    assert all(b["PID"] == pid and "VPV" in b and "PPV" in b for b in blocks)
    readings = [battery_reading(b) for b in blocks]
    assert all(r is not None for r in readings)
    for r in readings:
        assert r is not None
        assert 11.0 < r.v < 15.0 and -30.0 < r.i < 30.0
        assert r.p is None and r.soc is None and r.ttg is None and r.alarm is None
    if name == BLUESOLAR:
        assert readings[0] == BatteryReading(v=12.53, i=0.64)


@pytest.mark.parametrize("name", EXPECTED)
def test_random_chunking_gives_same_result(name: str) -> None:
    data = read_data(name)
    whole, blocks = parse_all(data)
    for seed in range(3):
        rnd = random.Random(seed)
        parser, got, pos = VEDirectParser(), [], 0
        while pos < len(data):
            size = rnd.randint(1, 97)
            got += parser.feed(data[pos : pos + size])
            pos += size
        assert got == blocks
        assert (parser.blocks_ok, parser.blocks_bad, parser.hex_frames) == (
            whole.blocks_ok,
            whole.blocks_bad,
            whole.hex_frames,
        )


def test_byte_at_a_time() -> None:
    data = read_data(BLUESOLAR)
    parser, got = VEDirectParser(), []
    for i in range(len(data)):
        got += parser.feed(data[i : i + 1])
    assert got == parse_all(data)[1]


def test_single_corrupt_byte_rejects_that_block_only() -> None:
    data = bytearray(read_data(BMV))
    _, clean = parse_all(bytes(data))
    # Turn "V\t12065" of the 11th main block into "V\t12066".
    at = [m.start() for m in re.finditer(rb"\r\nV\t", data)][10] + 7
    data[at] += 1
    parser, blocks = parse_all(bytes(data))
    assert parser.blocks_ok == 905 and parser.blocks_bad == 1
    assert blocks == clean[:20] + clean[21:]


def test_random_bit_flips_never_accepted() -> None:
    data = read_data(SMARTSOLAR)[-12000:]  # the tail holds both HEX frames
    _, clean = parse_all(data)
    hex_spans = [range(m.start(), m.end()) for m in re.finditer(rb":[0-9A-F]+\n", data)]
    rnd = random.Random(7)
    for _ in range(60):
        broken = bytearray(data)
        at = rnd.randrange(1000, len(data) - 1000)
        broken[at] ^= 1 << rnd.randrange(8)
        parser, blocks = parse_all(bytes(broken))
        if any(at in span for span in hex_spans) and parser.blocks_bad == 0:
            # HEX frames are stripped, not interpreted: the text blocks are intact.
            assert blocks == clean
            continue
        assert parser.blocks_bad >= 1
        assert parser.blocks_ok < len(clean)
        # Whatever survives is a subsequence of the good blocks: nothing invented.
        it = iter(clean)
        assert all(any(b == c for c in it) for b in blocks)


def test_stream_starting_mid_block() -> None:
    data = read_data(BMV)
    parser, blocks = parse_all(data[10:])
    _, clean = parse_all(data)
    assert blocks == clean[1:]
    assert parser.blocks_bad == 0


def test_hex_frame_inside_a_block_is_stripped() -> None:
    data = read_data(BMV)
    _, clean = parse_all(data)
    hex_frame = b":A8DED00B104FF\n"
    at = data.index(b"\r\nSOC\t") + 4  # inside the label "SOC"
    at2 = data.index(b"\r\nI\t", 500) + 5  # inside a value
    spliced = data[:at] + hex_frame + data[at:at2] + hex_frame + data[at2:]
    parser, blocks = parse_all(spliced)
    assert blocks == clean
    assert parser.hex_frames == 2 and parser.blocks_bad == 0


def test_garbage_and_oversize_blocks_are_bounded_and_counted() -> None:
    rnd = random.Random(3)
    noise = bytes(rnd.randrange(256) for _ in range(10 * MAX_BLOCK_BYTES)).replace(b"Checksum", b"")
    data = read_data(BMV)
    parser, blocks = parse_all(noise + data)
    assert parser.blocks_bad >= 5
    assert parser.blocks_ok >= 905
    assert blocks[-1] == parse_all(data)[1][-1]

    long_field = b"\r\nPID\t0x203\r\nX\t" + b"1" * (MAX_BLOCK_BYTES + 10)
    parser = VEDirectParser()
    parser.feed(data[:2000])
    bad_before = parser.blocks_bad
    parser.feed(long_field)
    assert parser.blocks_bad == bad_before + 1


def test_encode_block_round_trip_with_awkward_checksum_bytes() -> None:
    # Checksum bytes equal to ':' / CR / LF / TAB must not confuse the framing.
    parser = VEDirectParser()
    parser.feed(encode_block([("PID", "0x203")]))
    for wanted in (0x3A, 0x0D, 0x0A, 0x09):
        # Pick a pad value whose byte sum forces the checksum byte to `wanted`.
        fields = [("PID", "0x203"), ("V", "12000"), ("X", "")]
        base = sum(encode_block(fields)[:-1])
        pad = ""
        while True:
            last = (-wanted - base - sum(pad.encode())) % 256
            if 0x21 <= last < 0x7F and last != 0x3A:
                pad += chr(last)
                break
            pad += "~"
        fields[-1] = ("X", pad)
        block = encode_block(fields)
        assert block[-1] == wanted and sum(block) % 256 == 0
        assert parser.feed(block) == [dict(fields)]
    assert parser.blocks_bad == 0 and parser.blocks_ok == 5  # the sync block verifies too


def test_encode_block_rejects_unframeable_fields() -> None:
    for fields in ([("Checksum", "1")], [("A\tB", "1")], [("V", "1\r\n2")], [("", "1")], [("V", "a:b")]):
        with pytest.raises(ValueError):
            encode_block(fields)


def test_battery_reading_mapping() -> None:
    base = {"V": "12800", "I": "2500", "P": "32", "SOC": "1000", "TTG": "-1", "Alarm": "OFF", "AR": "0"}
    assert battery_reading(base) == BatteryReading(v=12.8, i=2.5, p=32.0, soc=100.0, ttg=-1, alarm=None)
    assert battery_reading({**base, "AR": "5", "Alarm": "ON"}).alarm == "low_voltage,low_soc"  # type: ignore[union-attr]
    assert battery_reading({**base, "AR": "0", "Alarm": "ON"}).alarm == "alarm"  # type: ignore[union-attr]
    assert battery_reading({**base, "TTG": "---", "SOC": "---"}) == BatteryReading(
        v=12.8, i=2.5, p=32.0, soc=None, ttg=None, alarm=None
    )
    assert battery_reading({"H1": "-1"}) is None
    assert battery_reading({"V": "12800"}) is None


def test_reader_over_a_byte_stream() -> None:
    # io.BytesIO has the .read(n) a serial port has; the reader is what's tested.
    reader = VEDirectReader(io.BytesIO(read_data(BMV)))
    first = reader.read_reading(timeout=1.0)
    second = reader.read_reading(timeout=1.0)
    assert (first.v, first.i, first.soc) == (12.065, -7.625, 83.9)
    assert second.i == -7.626  # the history block in between was skipped
    for _ in range(451):
        reader.read_reading(timeout=1.0)
    with pytest.raises(DriverTimeout):
        reader.read_reading(timeout=0.05)
    assert isinstance(DriverTimeout("x"), TimeoutError)
