"""JBD BMS frames: the codec and reassembler against real captures (PDU dumps, HCI logs, hex)."""

from __future__ import annotations

import re
import struct
from datetime import date

import pytest

from agent.drivers.jbd import (
    MAX_DATA_LEN,
    PROTECTION_FLAGS,
    REG_BASIC_INFO,
    REG_CELLS,
    Frame,
    JbdFrameError,
    JbdReading,
    JbdReassembler,
    encode_read,
    encode_reply,
    encode_write,
    parse_basic_info,
    parse_cell_voltages,
    parse_device_name,
    protection_flags,
)
from kits.contract import BatteryTelemetry
from tests.testdata import data_path, read_data

SP04 = "jbd_bms/esphomejbd_SP04S034-L4S-200A-B-U_pdus.txt"
SP04_MOS = "jbd_bms/esphomejbd_SP04S034-L4S-200A-B-U_mos_write_pdus.txt"
DP04_BLE = "jbd_bms/esphomejbd_DP04S007L4S100A_ble_pdus.txt"
SP25_UART = "jbd_bms/esphomejbd_SP25S003-L16S-100A_uart_log.txt"
JBDTOOL_DEBUG = "jbd_bms/esphomejbd_jbdtool_serial_debug.txt"
JBDTOOL_DECODED = "jbd_bms/esphomejbd_jbdtool_serial_decoded.txt"
HCI_SP04 = "jbd_bms/esphomejbd_SP04S034_btsnoop_hci.log"
HCI_MOSFETS = "jbd_bms/esphomejbd_btsnoop_hci_mosfets_onoff.log"
HCI_FFAA = "jbd_bms/esphomejbd_SP04S034_V1.3_ffaa_auth_btsnoop_hci.log"
FFAA_TEXT = "jbd_bms/esphomejbd_ffaa_auth_communications2.txt"
ISSUE_BLE = "jbd_bms/issue_dbus-btbattery-14_ble_log.hex"
ISSUE_SIMAT = "jbd_bms/issue_simat-BatteryMonitor-12_jbdtools_frames.hex"

HCI_LOGS = (HCI_SP04, HCI_MOSFETS, HCI_FFAA)


# -- loaders for the capture formats ---------------------------------------------------------

_PDU = re.compile(r"(>>>|<<<)\s*((?:[0-9A-Fa-fX]{2}[.:]?)+)")


def pdu_frames(name: str) -> list[tuple[str, bytes]]:
    """``>>> DD:A5:...`` / ``<<< DD.03...`` lines as (direction, bytes); frames with masked XX bytes skipped."""
    out = []
    for direction, hexes in _PDU.findall(data_path(name).read_text()):
        pairs = re.findall(r"[0-9A-Fa-fX]{2}", hexes)
        if any("X" in p.upper() for p in pairs):
            continue
        out.append(("tx" if direction == ">>>" else "rx", bytes(int(p, 16) for p in pairs)))
    return out


def pdu_replies(name: str) -> list[bytes]:
    # A ">>> DD ..." line written as an ack in the MOS file is a reply too: go by the bytes.
    return [f for _, f in pdu_frames(name) if f[1] not in (0xA5, 0x5A)]


def btsnoop_att(name: str) -> list[tuple[str, int, int, bytes]]:
    """ATT PDUs of an Android btsnoop log (H4 datalink 1002): (tx|rx, opcode, handle, value)."""
    data = read_data(name)
    assert data[:8] == b"btsnoop\0"
    version, datalink = struct.unpack(">II", data[8:16])
    assert (version, datalink) == (1, 1002)
    out, off = [], 16
    while off < len(data):
        _orig, incl, flags, _drops, _ts = struct.unpack(">IIIIq", data[off : off + 24])
        pkt = data[off + 24 : off + 24 + incl]
        off += 24 + incl
        if len(pkt) < 12 or pkt[0] != 0x02:  # H4 ACL data only
            continue
        _l2len, cid = struct.unpack("<HH", pkt[5:9])
        if cid != 0x0004:  # ATT
            continue
        opcode, handle = pkt[9], struct.unpack("<H", pkt[10:12])[0]
        out.append(("rx" if flags & 1 else "tx", opcode, handle, pkt[12:]))
    return out


ATT_WRITE_CMD, ATT_WRITE_REQ, ATT_NOTIFY = 0x52, 0x12, 0x1B


def hci_notifications(name: str) -> list[bytes]:
    return [v for d, op, _h, v in btsnoop_att(name) if d == "rx" and op == ATT_NOTIFY]


def hci_writes(name: str) -> list[bytes]:
    return [v for d, op, _h, v in btsnoop_att(name) if d == "tx" and op in (ATT_WRITE_CMD, ATT_WRITE_REQ)]


def issue_ble_pieces() -> list[bytes]:
    text = data_path(ISSUE_BLE).read_text()
    return [bytes.fromhex(h) for h in re.findall(r"new Hex_String\(\d+\): ([0-9a-f]+)", text)]


def jbdtool_reads() -> list[bytes]:
    """The chunks jbdtool read from the serial port, in order (its ``verify(N):`` hex dumps)."""
    chunks, current = [], None
    for line in data_path(JBDTOOL_DEBUG).read_text().splitlines():
        if line.startswith("verify("):
            current = bytearray()
            chunks.append(current)
        elif current is not None and re.match(r"^[0-9a-f]{4}: ", line):
            current += bytes.fromhex(line[6:54])
        else:
            current = None
    return [bytes(c) for c in chunks]


def jbdtool_decoded() -> dict[str, str]:
    out = {}
    for line in data_path(JBDTOOL_DECODED).read_text().splitlines()[1:]:
        key, _, value = line.partition(" ")
        out[key] = value.strip()
    return out


def simat_frames() -> list[bytes]:
    lines = data_path(ISSUE_SIMAT).read_text().splitlines()
    return [bytes.fromhex(line) for line in lines if line.strip()]


def reassemble(pieces: list[bytes]) -> tuple[JbdReassembler, list[Frame]]:
    r = JbdReassembler()
    frames = [f for piece in pieces for f in r.feed(piece)]
    return r, frames


# -- requests ------------------------------------------------------------------------------------


def test_read_requests_are_the_captured_bytes() -> None:
    requests = {f for d, f in pdu_frames(SP04) if d == "tx"}
    assert requests == {encode_read(r) for r in (0x03, 0x04, 0x05, 0xAA)}
    assert encode_read(REG_BASIC_INFO) == bytes.fromhex("DDA50300FFFD77")
    assert encode_read(REG_CELLS) == bytes.fromhex("DDA50400FFFC77")


@pytest.mark.parametrize("name", HCI_LOGS)
def test_app_read_requests_over_ble_match_the_encoder(name: str) -> None:
    reads = [w for w in hci_writes(name) if w[:2] == b"\xdd\xa5" and len(w) == 7]
    assert reads, "the app polls basic info and cells"
    assert all(w == encode_read(w[2]) for w in reads)


def test_mosfet_write_frames_match_the_encoder() -> None:
    writes = [f for d, f in pdu_frames(SP04_MOS) if d == "tx" and f[1] == 0x5A]
    assert len(writes) >= 6
    for w in writes:
        assert w == encode_write(w[2], w[4 : 4 + w[3]])


# -- every captured reply verifies ---------------------------------------------------------------


@pytest.mark.parametrize("name", [SP04, SP04_MOS, DP04_BLE, SP25_UART])
def test_every_captured_reply_is_one_good_frame(name: str) -> None:
    replies = pdu_replies(name)
    assert replies
    for raw in replies:
        r, frames = reassemble([raw])
        assert len(frames) == 1 and r.frames_bad == 0 and r.pending == 0, raw.hex()
        assert encode_reply(frames[0].register, frames[0].data, frames[0].status) == raw


def test_simat_replies_verify_although_the_register_byte_was_mistyped() -> None:
    # SOURCES.md: posted as "DD A5 00 .."; the register is not covered by the checksum.
    r, frames = reassemble(simat_frames())
    assert [f.register for f in frames] == [0xA5] * 6  # three requests parse as frames too
    replies = [f for f in frames if f.data]
    info = parse_basic_info(replies[0].data)
    assert (info.voltage_v, info.nominal_ah, info.cell_count, len(info.temps_c)) == (49.84, 10.0, 12, 2)
    assert len(parse_cell_voltages(replies[1].data)) == 12
    assert parse_device_name(replies[2].data) == "LH-SP15S001-P13S-30A"


# -- decoding ----------------------------------------------------------------------------------------


def _basic(name: str, index: int = 0) -> Frame:
    frames = [reassemble([raw])[1][0] for raw in pdu_replies(name)]
    return [f for f in frames if f.register == REG_BASIC_INFO][index]


def test_sp04s034_basic_info_decodes() -> None:
    info = parse_basic_info(_basic(SP04).data)
    assert (info.voltage_v, info.current_a, info.remaining_ah, info.nominal_ah) == (15.6, 0.0, 4.98, 5.0)
    assert (info.cycles, info.production_date, info.soc_pct) == (0, date(2022, 3, 28), 100)
    assert (info.charge_fet, info.discharge_fet, info.cell_count) == (True, True, 4)
    assert info.temps_c == (22.4, 22.3, 21.7)
    assert (info.protection, info.balance_bits, info.software_version, info.extra) == ((), 0, 0x80, b"")


def test_jbdtool_serial_chunks_reassemble_and_match_its_decoded_values() -> None:
    # Replies split across reads and leftovers before DD (00 00 DD 04 ..., 0F 3E DD 05 ...).
    r, frames = reassemble(jbdtool_reads())
    assert [f.register for f in frames] == [0x03, 0x03, 0x04, 0x04, 0x05, 0x05]
    assert r.frames_bad == 0 and r.noise_bytes == 4
    decoded = jbdtool_decoded()
    info = parse_basic_info(frames[0].data)
    # The decoded file is a later run of the same pack: compare what does not drift.
    assert info.nominal_ah == float(decoded["DesignCapacity"])
    assert info.remaining_ah == float(decoded["RemainingCapacity"])
    assert info.soc_pct == int(decoded["PercentCapacity"])
    assert info.cycles == int(decoded["CycleCount"])
    assert len(info.temps_c) == int(decoded["Probes"]) and info.cell_count == int(decoded["Strings"])
    assert info.production_date.strftime("%Y%m%d") == decoded["ManufactureDate"]
    assert decoded["FET"] == "Charge,Discharge" and info.charge_fet and info.discharge_fet
    assert parse_device_name(frames[4].data) == decoded["DeviceName"]
    cells = parse_cell_voltages(frames[2].data)
    wanted = [float(v) for v in decoded["Cells"].split(",")]
    assert len(cells) == 4 and all(abs(a - b) <= 0.002 for a, b in zip(cells, wanted))


def test_16s_uart_basic_info_matches_esphome_decoding() -> None:
    info = parse_basic_info(_basic(SP25_UART).data)
    assert (info.voltage_v, info.current_a, info.remaining_ah, info.nominal_ah) == (0.0, 0.0, 0.0, 100.0)
    assert (info.cycles, info.production_date, info.soc_pct) == (0, date(2022, 2, 16), 0)
    assert (info.charge_fet, info.discharge_fet) == (True, False)  # "operation status bitmask 1"
    assert (info.cell_count, info.temps_c, info.protection) == (16, (), ())
    assert info.software_version == 0x20  # ESPHome prints it as 2.0
    frames = [reassemble([raw])[1][0] for raw in pdu_replies(SP25_UART)]
    cells = parse_cell_voltages(next(f for f in frames if f.register == REG_CELLS).data)
    assert cells == (3.6,) * 15 + (0.0,)


def test_longer_basic_info_of_newer_firmware_keeps_the_extra_bytes() -> None:
    info = parse_basic_info(_basic(DP04_BLE).data)
    assert (info.voltage_v, info.remaining_ah, info.nominal_ah, info.cycles) == (13.75, 191.67, 200.0, 2)
    assert (info.soc_pct, info.cell_count, info.temps_c) == (96, 4, (26.2,))
    assert len(info.extra) == 0x22 - 25


def test_reading_fills_the_battery_telemetry_contract() -> None:
    info = parse_basic_info(_basic(DP04_BLE).data)
    fields = JbdReading(info).telemetry_fields()
    msg = BatteryTelemetry(boot="00ff", seq=1, ts=1, **fields)
    assert (msg.source, msg.v, msg.soc, msg.capacity_ah, msg.cycles) == ("jbd", 13.75, 96.0, 200.0, 2)
    assert msg.temps_c == [26.2] and msg.protection == []


# -- BLE: replies split into 20-byte notifications -------------------------------------------------


@pytest.mark.parametrize("name", HCI_LOGS)
def test_hci_notifications_reassemble_without_a_bad_frame(name: str) -> None:
    pieces = hci_notifications(name)
    assert max(len(p) for p in pieces) == 20  # the 0x03 reply needs two notifications
    r, frames = reassemble(pieces)
    assert r.frames_bad == 0, r.bad_reasons
    basics = [parse_basic_info(f.data) for f in frames if f.register == REG_BASIC_INFO]
    cells = [parse_cell_voltages(f.data) for f in frames if f.register == REG_CELLS]
    assert len(basics) > 10 and len(cells) > 10
    assert all(b.cell_count == 4 and len(c) == 4 for b, c in zip(basics, cells))
    assert all(10.0 < b.voltage_v < 17.0 for b in basics)


def test_ffaa_login_frames_are_skipped_as_noise() -> None:
    r, frames = reassemble(hci_notifications(HCI_FFAA))
    assert r.noise_bytes > 0 and frames


def test_ffaa_text_capture_replies_reassemble() -> None:
    rx = []
    for line in data_path(FFAA_TEXT).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("dd:") and not line.startswith("dd:a5") or re.match(r"^00:00:", line):
            rx.append(bytes.fromhex(line.replace(":", "")))
    r, frames = reassemble(rx)
    basics = [parse_basic_info(f.data) for f in frames if f.register == REG_BASIC_INFO]
    assert len(basics) == 4 and r.frames_bad == 0
    assert {b.voltage_v for b in basics} == {13.34}
    assert sorted({b.current_a for b in basics}) == [-0.7, -0.53, 0.0]  # 0xFFBA, 0xFFCB: discharging


def test_issue_log_20_20_5_split_reassembles() -> None:
    pieces = issue_ble_pieces()
    assert [len(p) for p in pieces[:5]] == [15, 20, 20, 5, 15]
    r, frames = reassemble(pieces)
    assert [f.register for f in frames] == [0x04, 0x03, 0x04]
    info = parse_basic_info(frames[1].data)
    assert (info.voltage_v, info.soc_pct, info.cell_count, len(info.temps_c)) == (13.18, 53, 4, 3)
    assert r.pending == 40  # the excerpt stops two notifications into the last reply


# -- corrupt frames ------------------------------------------------------------------------------------


def _good() -> bytes:
    return pdu_replies(SP04)[0]


@pytest.mark.parametrize("spoil, reason", [
    (lambda f: f[:-3] + bytes([f[-3] ^ 1]) + f[-2:], "bad_checksum"),
    (lambda f: f[:-1] + b"\x00", "bad_end"),
    (lambda f: f[:3] + bytes([MAX_DATA_LEN + 1]) + f[4:], "length_overflow"),
])
def test_corrupt_frame_is_counted_with_its_reason_and_the_next_good_one_survives(spoil, reason) -> None:
    good = _good()
    r, frames = reassemble([spoil(good)[:20], spoil(good)[20:], good[:20], good[20:]])
    assert len(frames) == 1 and frames[0].data == good[4:-3]
    assert r.frames_bad >= 1 and r.bad_reasons[reason] == 1
    assert r.last_error.startswith(reason)


def test_a_lost_notification_costs_one_reply_not_the_next() -> None:
    good = _good()
    # The second half of the first reply never arrived; the next reply is swallowed by the
    # half frame's length, fails, and is found again by resynchronising.
    r, frames = reassemble([good[:20], good[:20], good[20:]])
    assert len(frames) == 1 and r.frames_bad == 1


def test_garbage_never_grows_the_buffer() -> None:
    r = JbdReassembler()
    for k in range(200):
        r.feed(bytes([0xDD, 0x03, 0x00, 0x50]) + bytes(range(k % 20)))
    assert r.pending <= 2 * (MAX_DATA_LEN + 7)


def test_short_basic_info_is_a_frame_error() -> None:
    with pytest.raises(JbdFrameError):
        parse_basic_info(bytes(10))
    data = bytearray(_basic(SP04).data)
    data[22] = 5  # claims five temperatures, carries three
    with pytest.raises(JbdFrameError):
        parse_basic_info(bytes(data))


# -- protection flags -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bit, name", list(enumerate(PROTECTION_FLAGS)))
def test_each_protection_bit_has_its_name(bit: int, name: str) -> None:
    assert protection_flags(1 << bit) == (name,)


def test_protection_flags_from_a_reply() -> None:
    data = bytearray(_basic(SP04).data)
    data[16:18] = (1 << 1 | 1 << 10 | 1 << 13).to_bytes(2, "big")
    info = parse_basic_info(bytes(data))
    assert info.protection == ("cell_undervoltage", "short_circuit", "protection_bit13")
