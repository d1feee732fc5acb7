"""JBD ("Xiaoxiang", Jiabaida) battery management systems over BLE.

Wire format (the same on the BMS's UART and through its BLE module): GATT service 0xFF00;
the host writes requests to 0xFF02 and the BMS answers with notifications on 0xFF01.

    request  DD A5 <register> 00 <checksum:2> 77          e.g. DD A5 03 00 FF FD 77
    reply    DD <register> <status> <len> <data:len> <checksum:2> 77

The checksum is ``(0x10000 - sum(bytes after the register up to the checksum)) & 0xFFFF``,
big endian: for a request that is the length and data after A5's register byte (so the
register counts), for a reply the status, length and data (the register does not). Status
0x00 is OK, 0x80 an error. Register 0x03 is the basic information (pack voltage, current,
capacities, protection flags, temperatures), 0x04 the cell voltages, 0x05 the device name.

Over BLE a reply longer than 20 bytes arrives in 20-byte notifications (one ATT payload at
the default MTU); :class:`JbdReassembler` puts them back together, skips bytes that are not
part of a frame, and counts corrupt frames with the reason.

Register 0x03 data, all big endian (field widths from the JBD protocol sheet, checked against
the captures in ``testdata/jbd_bms``):

    0  u16  total voltage, 10 mV          14 u16  balance bits, cells 17..32
    2  s16  current, 10 mA (- = discharge) 16 u16  protection status bits (PROTECTION_FLAGS)
    4  u16  remaining capacity, 10 mAh    18 u8   software version
    6  u16  nominal capacity, 10 mAh      19 u8   RSOC, %
    8  u16  cycles                        20 u8   FET status: bit 0 charge, bit 1 discharge on
    10 u16  production date (y-2000)<<9 | month<<5 | day
    12 u16  balance bits, cells 1..16     21 u8   cell count; 22 u8 NTC count n
    23 n x u16 NTC temperatures, 0.1 K (value - 2731 = tenths of a degree C)

Newer firmware appends more bytes after the temperatures (length 0x22, 0x26 ...); they are
kept in ``BasicInfo.extra`` and not interpreted. Newer BLE modules (V1.3, see the FF AA
capture) can be set to require a password before they answer; this driver does not log in.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Callable

from agent.drivers.ble import Backoff, BleError, BleLink, BleLinkLost, BleTimeout, uuid16
from agent.errors import PowerBankError
from agent.readiness import Problem, fault, warning

log = logging.getLogger("popkit.agent.jbd")

SERVICE_UUID = uuid16(0xFF00)
NOTIFY_UUID = uuid16(0xFF01)
WRITE_UUID = uuid16(0xFF02)

START = 0xDD
END = 0x77
READ = 0xA5
WRITE = 0x5A

REG_BASIC_INFO = 0x03
REG_CELLS = 0x04
REG_NAME = 0x05

STATUS_OK = 0x00

# The length field is one byte, but no JBD reply seen in the wild is longer than 0x40 (32
# cells); a bigger claim is a corrupt length byte, and waiting for it would swallow the
# next good reply.
MAX_DATA_LEN = 0x50
# Bytes held while waiting for a frame to complete; more than two maximal frames is noise.
MAX_BUFFER = 2 * (MAX_DATA_LEN + 7)

# Bit n of the protection status word, in JBD's order (bits 13..15 are reserved).
PROTECTION_FLAGS = (
    "cell_overvoltage",
    "cell_undervoltage",
    "pack_overvoltage",
    "pack_undervoltage",
    "charge_overtemp",
    "charge_undertemp",
    "discharge_overtemp",
    "discharge_undertemp",
    "charge_overcurrent",
    "discharge_overcurrent",
    "short_circuit",
    "frontend_ic_error",
    "mosfet_software_lock",
)

# Below this the pack will not carry an evening whatever the manifest asks: a fault.
EMPTY_SOC = 10.0


class JbdError(PowerBankError):
    """The BMS answered with something this driver cannot use."""


class JbdFrameError(JbdError, ValueError):
    """A reply frame (or its data) breaks the JBD format."""


class JbdLinkLost(BleLinkLost, PowerBankError):
    """The BMS is not reachable over BLE (switched off, out of range, link dropped)."""


class JbdTimeout(BleTimeout, PowerBankError):
    """Connected, but the BMS did not send a complete, valid reply in time."""


def checksum(payload: bytes) -> int:
    return (0x10000 - sum(payload)) & 0xFFFF


def encode_read(register: int) -> bytes:
    """The request frame that asks for ``register`` (e.g. 0x03 -> DD A5 03 00 FF FD 77)."""
    body = bytes((register, 0))
    return bytes((START, READ)) + body + checksum(body).to_bytes(2, "big") + bytes((END,))


def encode_write(register: int, data: bytes) -> bytes:
    """A write request (``DD 5A <register> <len> <data> <checksum> 77``)."""
    if len(data) > 0xFF:
        raise ValueError("JBD write data is at most 255 bytes")
    body = bytes((register, len(data))) + data
    return bytes((START, WRITE)) + body + checksum(body).to_bytes(2, "big") + bytes((END,))


def encode_reply(register: int, data: bytes, status: int = STATUS_OK) -> bytes:
    """A reply frame as the BMS sends it (used by the simulator and the tests)."""
    if len(data) > 0xFF:
        raise ValueError("JBD reply data is at most 255 bytes")
    body = bytes((status, len(data))) + data
    return bytes((START, register)) + body + checksum(body).to_bytes(2, "big") + bytes((END,))


@dataclass(frozen=True)
class Frame:
    """One verified reply: which register it answers, its status byte and its data."""

    register: int
    status: int
    data: bytes

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK


class JbdReassembler:
    """Turns notification payloads (any split) into verified reply frames.

    Bytes before a DD start byte are skipped (``noise_bytes``): the first notification after
    subscribing, the FF AA login frames of newer modules, leftovers on a UART. A candidate
    frame is rejected, counted in ``frames_bad`` and ``bad_reasons`` and ``last_error`` says
    why, when its length byte is implausible (``length_overflow``), the byte where 77 should
    be is something else (``bad_end``) or the checksum does not match (``bad_checksum``).
    After a rejection the search restarts one byte after the rejected DD, so a good frame
    that a corrupt one swallowed is still found.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.frames_ok = 0
        self.frames_bad = 0
        self.noise_bytes = 0
        self.bad_reasons: Counter[str] = Counter()
        self.last_error: str | None = None
        self.last_register: int | None = None  # register byte of the last rejected frame

    def reset(self) -> None:
        """Forget a half-received frame (before a new request, after a reconnect)."""
        self._buf.clear()

    @property
    def pending(self) -> int:
        return len(self._buf)

    def _reject(self, reason: str, detail: str) -> None:
        self.frames_bad += 1
        self.last_register = self._buf[1]
        self.bad_reasons[reason] += 1
        self.last_error = f"{reason}: {detail}"
        log.debug("JBD frame rejected: %s", self.last_error)
        del self._buf[0]  # resynchronise just after the rejected start byte

    def feed(self, chunk: bytes) -> list[Frame]:
        self._buf += chunk
        frames: list[Frame] = []
        while True:
            start = self._buf.find(START)
            if start < 0:
                self.noise_bytes += len(self._buf)
                self._buf.clear()
                return frames
            if start:
                self.noise_bytes += start
                del self._buf[:start]
            if len(self._buf) < 4:
                return frames
            length = self._buf[3]
            if length > MAX_DATA_LEN:
                self._reject("length_overflow", f"length byte 0x{length:02X} > 0x{MAX_DATA_LEN:02X}")
                continue
            total = length + 7
            if len(self._buf) < total:
                if len(self._buf) > MAX_BUFFER:  # cannot happen with MAX_DATA_LEN, kept as a guard
                    self._reject("length_overflow", "frame never completed")
                    continue
                return frames
            candidate = bytes(self._buf[:total])
            if candidate[-1] != END:
                self._reject("bad_end", f"byte {total - 1} is 0x{candidate[-1]:02X}, not 0x77")
                continue
            want = checksum(candidate[2 : 4 + length])
            got = int.from_bytes(candidate[4 + length : 6 + length], "big")
            if want != got:
                self._reject("bad_checksum", f"frame says 0x{got:04X}, bytes sum to 0x{want:04X}")
                continue
            del self._buf[:total]
            self.frames_ok += 1
            frames.append(Frame(register=candidate[1], status=candidate[2], data=candidate[4 : 4 + length]))


def protection_flags(bits: int) -> tuple[str, ...]:
    """Names of the protection bits set in ``bits``; reserved bits come out as ``protection_bit13``."""
    names = [name for n, name in enumerate(PROTECTION_FLAGS) if bits >> n & 1]
    names += [f"protection_bit{n}" for n in range(len(PROTECTION_FLAGS), 16) if bits >> n & 1]
    return tuple(names)


def production_date(word: int) -> date | None:
    try:
        return date(2000 + (word >> 9), word >> 5 & 0x0F, word & 0x1F)
    except ValueError:  # 0 or a garbled word: unknown, not an error
        return None


@dataclass(frozen=True)
class BasicInfo:
    """Register 0x03 in SI units. ``current_a`` is negative while discharging."""

    voltage_v: float
    current_a: float
    remaining_ah: float
    nominal_ah: float
    cycles: int
    production_date: date | None
    balance_bits: int  # bit n set: cell n+1 is being balanced
    protection_bits: int
    software_version: int  # the raw byte; vendors print it differently (0x20 "2.0", 0x80 "12.8")
    soc_pct: int
    charge_fet: bool
    discharge_fet: bool
    cell_count: int
    temps_c: tuple[float, ...]
    extra: bytes = b""

    @property
    def protection(self) -> tuple[str, ...]:
        return protection_flags(self.protection_bits)

    @property
    def power_w(self) -> float:
        return round(self.voltage_v * self.current_a, 2)


def _u16(data: bytes, at: int) -> int:
    return int.from_bytes(data[at : at + 2], "big")


def parse_basic_info(data: bytes) -> BasicInfo:
    if len(data) < 23:
        raise JbdFrameError(f"basic info is {len(data)} bytes, needs at least 23")
    ntc = data[22]
    end = 23 + 2 * ntc
    if len(data) < end:
        raise JbdFrameError(f"basic info claims {ntc} temperatures but is only {len(data)} bytes")
    return BasicInfo(
        voltage_v=_u16(data, 0) / 100,
        current_a=int.from_bytes(data[2:4], "big", signed=True) / 100,
        remaining_ah=_u16(data, 4) / 100,
        nominal_ah=_u16(data, 6) / 100,
        cycles=_u16(data, 8),
        production_date=production_date(_u16(data, 10)),
        balance_bits=_u16(data, 12) | _u16(data, 14) << 16,
        protection_bits=_u16(data, 16),
        software_version=data[18],
        soc_pct=data[19],
        charge_fet=bool(data[20] & 1),
        discharge_fet=bool(data[20] & 2),
        cell_count=data[21],
        temps_c=tuple(round((_u16(data, 23 + 2 * k) - 2731) / 10, 1) for k in range(ntc)),
        extra=bytes(data[end:]),
    )


def parse_cell_voltages(data: bytes) -> tuple[float, ...]:
    """Register 0x04: one big-endian u16 per cell, in mV."""
    if len(data) % 2:
        raise JbdFrameError(f"cell voltage data has odd length {len(data)}")
    return tuple(_u16(data, k) / 1000 for k in range(0, len(data), 2))


def parse_device_name(data: bytes) -> str:
    return data.decode("ascii", errors="replace")


@dataclass(frozen=True)
class JbdReading:
    """One poll of the BMS: basic info, and the cell voltages when they were read."""

    info: BasicInfo
    cells_v: tuple[float, ...] | None = None

    def telemetry_fields(self) -> dict[str, Any]:
        """Keyword arguments for ``kits.contract.BatteryTelemetry``."""
        info = self.info
        return {
            "source": "jbd",
            "v": info.voltage_v,
            "i": info.current_a,
            "p": info.power_w,
            "soc": float(min(max(info.soc_pct, 0), 100)),
            "remaining_ah": info.remaining_ah,
            "capacity_ah": info.nominal_ah,
            "cycles": info.cycles,
            "temps_c": list(info.temps_c[:8]),
            "protection": list(info.protection[:16]),
        }


@dataclass
class _Waiter:
    register: int
    future: asyncio.Future = field(repr=False)


class JbdBms:
    """A JBD BMS at a BLE address: ``await read()`` gives a :class:`JbdReading`.

    Every failure is a ``PowerBankError``: :class:`JbdLinkLost` when the BMS cannot be
    reached (the link state also goes to ``on_state``), :class:`JbdTimeout` when it stays
    silent or only sends corrupt frames, :class:`JbdError` when it refuses a register.
    A request is tried ``attempts`` times, reconnecting in between if the link dropped;
    after that the link waits out its backoff before the next connect.
    """

    def __init__(
        self,
        address: str,
        *,
        backend: Any = None,
        reply_timeout: float = 3.0,
        connect_timeout: float = 10.0,
        attempts: int = 2,
        backoff: Backoff | None = None,
        on_state: Callable[[bool, str], None] | None = None,
        read_cells: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.address = address
        self.reply_timeout = reply_timeout
        self.attempts = max(1, attempts)
        self.read_cells = read_cells
        self.reassembler = JbdReassembler()
        self.link = BleLink(
            address,
            backend=backend,
            notify={NOTIFY_UUID: self._on_notify},
            connect_timeout=connect_timeout,
            backoff=backoff,
            on_state=on_state,
            clock=clock,
        )
        self._waiter: _Waiter | None = None
        self.stray_frames = 0  # valid frames nobody asked for (late replies)
        self.timeouts = 0

    @property
    def link_up(self) -> bool:
        return self.link.up

    def _on_notify(self, data: bytes) -> None:
        bad_before = self.reassembler.frames_bad
        frames = self.reassembler.feed(data)
        waiter = self._waiter
        if self.reassembler.frames_bad > bad_before and waiter is not None and not waiter.future.done() \
                and self.reassembler.last_register == waiter.register and not frames:
            # The reply to our request arrived spoilt: ask again now rather than at the timeout.
            waiter.future.set_exception(BleTimeout(
                f"BMS {self.address} sent a corrupt reply to register 0x{waiter.register:02X} "
                f"({self.reassembler.last_error})"))
        for frame in frames:
            waiter = self._waiter
            if waiter is not None and frame.register == waiter.register and not waiter.future.done():
                waiter.future.set_result(frame)
            else:
                self.stray_frames += 1

    async def request(self, register: int) -> Frame:
        """Ask for ``register`` and return its verified reply frame."""
        last: BleError | None = None
        for _attempt in range(self.attempts):
            try:
                await self.link.ensure_up()
                return await self._exchange(register)
            except BleTimeout as exc:
                last = exc
            except BleLinkLost as exc:
                last = exc
                if self.link.next_attempt > 0:  # the reconnect itself failed: wait out the backoff
                    break
        if isinstance(last, BleTimeout):
            # A BMS that stays silent on a live link is often wedged; a new connection cures it.
            await self.link.mark_lost(str(last))
            raise JbdTimeout(str(last)) from last
        raise JbdLinkLost(str(last)) from last

    async def _exchange(self, register: int) -> Frame:
        loop = asyncio.get_running_loop()
        waiter = _Waiter(register, loop.create_future())
        self.reassembler.reset()
        self._waiter = waiter
        lost = self.link.lost_event()
        lost_wait = asyncio.ensure_future(lost.wait())
        try:
            await self.link.write(WRITE_UUID, encode_read(register), response=False)
            await asyncio.wait({waiter.future, lost_wait}, timeout=self.reply_timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._waiter = None
            lost_wait.cancel()
        if waiter.future.done():
            frame = waiter.future.result()
            if not frame.ok:
                raise JbdError(f"BMS {self.address} refused register 0x{register:02X} (status 0x{frame.status:02X})")
            return frame
        if lost.is_set():
            raise BleLinkLost(f"{self.address}: link dropped while waiting for register 0x{register:02X}")
        self.timeouts += 1
        bad = self.reassembler.frames_bad
        detail = f"; {bad} corrupt frames so far, last {self.reassembler.last_error}" if bad else ""
        raise BleTimeout(f"BMS {self.address} sent no valid reply to register 0x{register:02X} "
                         f"within {self.reply_timeout:g}s{detail}")

    async def read_basic_info(self) -> BasicInfo:
        return parse_basic_info((await self.request(REG_BASIC_INFO)).data)

    async def read_cell_voltages(self) -> tuple[float, ...]:
        return parse_cell_voltages((await self.request(REG_CELLS)).data)

    async def read_device_name(self) -> str:
        return parse_device_name((await self.request(REG_NAME)).data)

    async def read(self) -> JbdReading:
        info = await self.read_basic_info()
        cells = await self.read_cell_voltages() if self.read_cells else None
        return JbdReading(info, cells)

    async def self_test(self, device_id: str, expect: Any = None) -> list[Problem]:
        """What the crew must know about the pack; never raises.

        Policy: no link, a refused or garbled reply, an active protection flag, discharge
        switched off in the BMS, or a pack under 10 % are faults (the kit must not open on
        it). A state of charge under ``expect.min_soc`` is a warning: the target is for
        doors-open and the self-test usually runs hours earlier, when charging still helps.
        """
        return (await self.check(device_id, expect))[1]

    async def check(self, device_id: str, expect: Any = None) -> tuple["JbdReading | None", list[Problem]]:
        """The reading the self-test judged (None when there was none) and its problems; never raises."""
        try:
            reading = await self.read()
        except BleError:
            return None, [fault(device_id, "battery monitor not answering over Bluetooth",
                                "switch the pack on and bring the Pi within range")]
        except JbdError as exc:
            return None, [fault(device_id, f"battery monitor sent unusable data ({exc})",
                                "switch the pack off and on again; if it persists, replace its BMS")]
        return reading, assess(device_id, reading, expect)

    async def close(self) -> None:
        await self.link.close()


def assess(device_id: str, reading: JbdReading, expect: Any = None) -> list[Problem]:
    """The self-test verdict on one reading (see :meth:`JbdBms.self_test` for the policy)."""
    info = reading.info
    problems: list[Problem] = []
    if info.protection:
        problems.append(fault(device_id, f"battery protection active: {', '.join(info.protection)}",
                              "remove the cause (charge, cool or unload the pack), then switch it off and on"))
    if not info.discharge_fet and not info.protection:
        problems.append(fault(device_id, "battery output switched off in the BMS",
                              "turn discharge on in the BMS app"))
    min_soc = getattr(expect, "min_soc", None)
    if info.soc_pct < EMPTY_SOC:
        problems.append(fault(device_id, f"battery nearly empty ({info.soc_pct} %)",
                              "charge the pack or swap in a full one"))
    elif min_soc is not None and info.soc_pct < min_soc:
        problems.append(warning(device_id, f"battery at {info.soc_pct} %, {min_soc:g} % wanted at doors-open",
                                "charge the pack before doors open or bring a spare"))
    return problems


def jbd_monitor(address: str, backend: Any = None, **options: Any) -> JbdBms:
    """The JBD BMS at ``address``; ``backend`` is bleak's backend class (None: the real stack)."""
    return JbdBms(address, backend=backend, **options)
