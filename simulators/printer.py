"""An Epson-style ESC/POS receipt printer on a pty.

It answers ``DLE EOT n`` real-time status requests from its current state and
keeps every other byte it receives in ``received``. The stream is split into
whole commands first, so a ``10 04 n`` sequence inside a command's data (a
raster image, a barcode, a parameter byte) is data, not a status request.
Rendering is a later job: ``EscPosStreamParser`` already yields typed
``EscPosItem``s for a renderer to consume.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Literal

from simulators.pty import PtySimulator

HT, LF, FF, CR, CAN = 0x09, 0x0A, 0x0C, 0x0D, 0x18
DLE, ESC, FS, GS = 0x10, 0x1B, 0x1C, 0x1D
EOT, ENQ, DC4 = 0x04, 0x05, 0x14

_PREFIX_NAMES = {DLE: "DLE", ESC: "ESC", FS: "FS", GS: "GS"}
_CONTROL_NAMES = {HT: "HT", LF: "LF", FF: "FF", CR: "CR", CAN: "CAN"}

Kind = Literal["text", "control", "command", "status_request", "unknown"]


@dataclass(frozen=True)
class EscPosItem:
    """One unit of the host's byte stream."""

    kind: Kind
    name: str  # "text", "LF", "ESC @", "GS v 0", ...
    raw: bytes


# A length rule gets the buffer and the index where the command starts, and
# returns the command's total length, or None while more bytes are needed.
# (Index, not a slice: slicing per command would make big images quadratic.)
LengthRule = Callable[[bytes, int], int | None]


def _u16(buf: bytes, i: int) -> int:
    return buf[i] | buf[i + 1] << 8


def _complete(buf: bytes, i: int, total: int) -> int | None:
    return total if len(buf) - i >= total else None


def _fixed(n: int) -> LengthRule:
    return lambda buf, i: _complete(buf, i, n)


def _header_then(header: int, payload: Callable[[bytes, int], int]) -> LengthRule:
    """``header`` fixed bytes, then ``payload(buf, i)`` data bytes counted from them."""

    def rule(buf: bytes, i: int) -> int | None:
        if len(buf) - i < header:
            return None
        return _complete(buf, i, header + payload(buf, i))

    return rule


def _nul_terminated(start: int, limit: int) -> LengthRule:
    def rule(buf: bytes, i: int) -> int | None:
        end = buf.find(0, i + start, i + start + limit)
        if end >= 0:
            return end - i + 1
        # No NUL within the limit means we mis-framed; take what we have
        # rather than swallowing the rest of the stream.
        return _complete(buf, i, start + limit)

    return rule


def _esc_star(buf: bytes, i: int) -> int | None:  # ESC * m nL nH d1..dk (bit image)
    if len(buf) - i < 5:
        return None
    columns = _u16(buf, i + 3)
    return _complete(buf, i, 5 + columns * (1 if buf[i + 2] in (0, 1) else 3))


def _esc_ampersand(buf: bytes, i: int) -> int | None:  # ESC & y c1 c2 [x d1..d(y*x)]...
    if len(buf) - i < 5:
        return None
    height, first, last = buf[i + 2], buf[i + 3], buf[i + 4]
    pos = i + 5
    for _ in range(max(0, last - first + 1)):
        if len(buf) <= pos:
            return None
        pos += 1 + height * buf[pos]
    return _complete(buf, i, pos - i)


def _gs_k(buf: bytes, i: int) -> int | None:  # GS k m ... (barcode)
    if len(buf) - i < 4:
        return None
    if buf[i + 2] <= 6:  # function A: data ends with NUL
        return _nul_terminated(3, 256)(buf, i)
    return _complete(buf, i, 4 + buf[i + 3])  # function B: GS k m n d1..dn


def _gs_v(buf: bytes, i: int) -> int | None:  # GS V m [n] (cut; m >= 65 adds a feed amount)
    if len(buf) - i < 3:
        return None
    return _complete(buf, i, 4 if buf[i + 2] >= 65 else 3)


def _dle_dc4(buf: bytes, i: int) -> int | None:
    if len(buf) - i < 3:
        return None
    return _complete(buf, i, {7: 4, 8: 10}.get(buf[i + 2], 5))


def _dle_eot(buf: bytes, i: int) -> int | None:
    if len(buf) - i < 3:
        return None
    return _complete(buf, i, 4 if buf[i + 2] in (7, 8) else 3)  # n = 7, 8 take an extra byte


def _fs_q(buf: bytes, i: int) -> int | None:  # FS q n [xL xH yL yH d1..d(x*y*8)]n (NV bit images)
    if len(buf) - i < 3:
        return None
    pos = i + 3
    for _ in range(buf[i + 2]):
        if len(buf) < pos + 4:
            return None
        pos += 4 + _u16(buf, pos) * _u16(buf, pos + 2) * 8
    return _complete(buf, i, pos - i)


def _table() -> dict[bytes, LengthRule]:
    # "<prefix> <fn> pL pH <p bytes>": GS ( x, FS ( x and ESC ( x all share this shape.
    param_block = _header_then(5, lambda b, i: _u16(b, i + 3))
    rules: dict[bytes, LengthRule] = {
        bytes((DLE, EOT)): _dle_eot,
        bytes((DLE, ENQ)): _fixed(3),
        bytes((DLE, DC4)): _dle_dc4,
        b"\x1b*": _esc_star,
        b"\x1b&": _esc_ampersand,
        b"\x1bD": _nul_terminated(2, 33),
        b"\x1b(": param_block,
        b"\x1d(": param_block,
        b"\x1c(": param_block,
        b"\x1d8": _header_then(7, lambda b, i: int.from_bytes(b[i + 3 : i + 7], "little")),  # GS 8 L
        b"\x1dk": _gs_k,
        b"\x1dV": _gs_v,
        b"\x1dv0": _header_then(8, lambda b, i: _u16(b, i + 4) * _u16(b, i + 6)),  # GS v 0 raster
        b"\x1d*": _header_then(4, lambda b, i: b[i + 2] * b[i + 3] * 8),  # GS * x y d...
        b"\x1c2": _fixed(76),  # FS 2 c1 c2 d1..d72 (user-defined Kanji)
        b"\x1cq": _fs_q,
    }
    for length, commands in {
        2: ("\x1b@", "\x1b2", "\x1b<", "\x1bL", "\x1bS", "\x1bi", "\x1bm",
            "\x1d:", "\x1c&", "\x1c."),
        3: ("\x1b!", "\x1b%", "\x1b-", "\x1b3", "\x1b=", "\x1b?", "\x1bE", "\x1bG", "\x1bJ",
            "\x1bK", "\x1bM", "\x1bR", "\x1bT", "\x1bU", "\x1bV", "\x1ba", "\x1bd", "\x1be",
            "\x1br", "\x1bt", "\x1bu", "\x1bv", "\x1b{", "\x1b ",
            "\x1d!", "\x1dB", "\x1dE", "\x1dH", "\x1dI", "\x1dT", "\x1da", "\x1db", "\x1df",
            "\x1dh", "\x1dr", "\x1dw", "\x1d/",
            "\x1c!", "\x1c-", "\x1cC", "\x1cW"),
        4: ("\x1b$", "\x1b\\", "\x1bc", "\x1dL", "\x1dW", "\x1dP", "\x1d$", "\x1d\\",
            "\x1cS", "\x1cp"),
        5: ("\x1bp", "\x1d^"),
        6: ("\x1dg",),  # GS g 0 m nL nH / GS g 2 m nL nH (maintenance counters)
        10: ("\x1bW",),
    }.items():
        for command in commands:
            rules[command.encode("latin-1")] = _fixed(length)
    return rules


COMMANDS: dict[bytes, LengthRule] = _table()


def _name(prefix: bytes) -> str:
    parts = [_PREFIX_NAMES.get(prefix[0], f"0x{prefix[0]:02X}")]
    for byte in prefix[1:]:
        if byte == EOT:
            parts.append("EOT")
        elif byte == ENQ:
            parts.append("ENQ")
        elif byte == DC4:
            parts.append("DC4")
        elif 0x21 <= byte < 0x7F:
            parts.append(chr(byte))
        elif byte == 0x20:
            parts.append("SP")
        else:
            parts.append(f"0x{byte:02X}")
    return " ".join(parts)


class EscPosStreamParser:
    """Splits a host->printer byte stream into text, controls and whole commands.

    Incremental: an incomplete command stays buffered until the rest arrives.
    Unknown ``ESC x``/``GS x``/``FS x``/``DLE x`` are emitted as 2-byte
    "unknown" items so a renderer can flag them; their parameters (if any)
    then show up as text, which is the best we can do without the command.
    """

    def __init__(self, commands: dict[bytes, LengthRule] | None = None) -> None:
        self.commands = COMMANDS if commands is None else commands
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes held back as the start of an incomplete command."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[EscPosItem]:
        self._buf += data
        buf = bytes(self._buf)
        items: list[EscPosItem] = []
        pos = 0
        while pos < len(buf):
            item = self._next(buf, pos)
            if item is None:
                break
            items.append(item)
            pos += len(item.raw)
        del self._buf[:pos]
        return items

    def _next(self, buf: bytes, pos: int) -> EscPosItem | None:
        byte = buf[pos]
        if byte in _PREFIX_NAMES:
            return self._command(buf, pos)
        if byte < 0x20:
            name = _CONTROL_NAMES.get(byte)
            kind: Kind = "control" if name else "unknown"
            return EscPosItem(kind, name or f"0x{byte:02X}", buf[pos : pos + 1])
        end = pos + 1
        while end < len(buf) and buf[end] >= 0x20:
            end += 1
        return EscPosItem("text", "text", buf[pos:end])

    def _command(self, buf: bytes, pos: int) -> EscPosItem | None:
        if len(buf) - pos < 2:
            return None
        for size in (3, 2):
            prefix = buf[pos : pos + size]
            rule = self.commands.get(prefix) if len(prefix) == size else None
            if rule is None:
                continue
            length = rule(buf, pos)
            if length is None:
                return None
            raw = buf[pos : pos + length]
            if prefix == bytes((DLE, EOT)) and raw[2] in (1, 2, 3, 4):
                return EscPosItem("status_request", f"DLE EOT {raw[2]}", raw)
            # "GS ( k" and friends: the function byte says what the command is.
            name = _name(raw[:3]) if prefix[1:] == b"(" else _name(prefix)
            return EscPosItem("command", name, raw)
        if len(buf) - pos < 3 and any(len(k) == 3 and k[:2] == buf[pos : pos + 2] for k in self.commands):
            return None  # could still become a known 3-byte prefix (e.g. GS v 0)
        return EscPosItem("unknown", _name(buf[pos : pos + 2]), buf[pos : pos + 2])


Paper = Literal["ok", "near_end", "out"]
ErrorKind = Literal["recoverable", "autocutter", "unrecoverable", "auto_recoverable"]
_ERROR_BITS: dict[str, int] = {"recoverable": 0x04, "autocutter": 0x08, "unrecoverable": 0x20, "auto_recoverable": 0x40}


class PrinterSimulator(PtySimulator):
    """A TM-T20-like printer: state is ``paper``, ``cover_open``, ``online``,
    ``error`` and ``powered``. Switched off (``powered=False``) it answers
    nothing and receives nothing, like a dead serial line.
    """

    name = "printer-simulator"

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self.parser = EscPosStreamParser()
        self.received = bytearray()
        self.items: list[EscPosItem] = []
        self.status_requests: list[int] = []
        self.paper: Paper = "ok"
        self.cover_open = False
        self.online = True  # False: offline for a reason not modelled otherwise
        self.error: ErrorKind | None = None
        self.powered = True

    def set_state(
        self,
        *,
        paper: Paper | None = None,
        cover_open: bool | None = None,
        online: bool | None = None,
        error: ErrorKind | None | Literal[False] = False,
        powered: bool | None = None,
    ) -> None:
        """Change state atomically; ``error=None`` clears the error, omitted keeps it."""
        with self._lock:
            if paper is not None:
                if paper not in ("ok", "near_end", "out"):
                    raise ValueError(f"paper must be ok, near_end or out, not {paper!r}")
                self.paper = paper
            if cover_open is not None:
                self.cover_open = cover_open
            if online is not None:
                self.online = online
            if error is not False:
                if error is not None and error not in _ERROR_BITS:
                    raise ValueError(f"unknown error kind {error!r}")
                self.error = error
            if powered is not None:
                self.powered = powered

    def status_byte(self, n: int) -> int | None:
        """The reply to DLE EOT ``n`` in the current state (None: not supported)."""
        with self._lock:
            paper_end = self.paper == "out"
            offline = not self.online or self.cover_open or paper_end or self.error is not None
            if n == 1:
                return 0x12 | (0x08 if offline else 0)
            if n == 2:
                return (
                    0x12
                    | (0x04 if self.cover_open else 0)
                    | (0x20 if paper_end else 0)
                    | (0x40 if self.error is not None else 0)
                )
            if n == 3:
                return 0x12 | (_ERROR_BITS[self.error] if self.error is not None else 0)
            if n == 4:
                # Paper removed: 0x72, bits 5|6 with the near-end pair clear, as a
                # real Epson reported it (python-escpos#143).
                return {"ok": 0x12, "near_end": 0x1E, "out": 0x72}[self.paper]
        return None

    def on_receive(self, data: bytes) -> None:
        with self._lock:
            if not self.powered:
                return
        replies = bytearray()
        for item in self.parser.feed(data):
            if item.kind == "status_request":
                n = item.raw[2]
                self.status_requests.append(n)
                reply = self.status_byte(n)
                if reply is not None:
                    replies.append(reply)
            else:
                with self._lock:
                    self.received += item.raw
                    self.items.append(item)
        if replies:
            self.pty.write(bytes(replies))
