"""An Epson-style ESC/POS receipt printer on a pty.

It answers ``DLE EOT n`` real-time status requests from its current state and
keeps every other byte it receives in ``received``. The stream is split into
whole commands first, so a ``10 04 n`` sequence inside a command's data (a
raster image, a barcode, a parameter byte) is data, not a status request.

``PaperRoll`` renders what was printed: text lines, QR/PDF417/barcode
placeholders carrying their data, raster images, cuts; ``to_png()`` draws it
when Pillow is installed. ``PrinterModel`` is the printer itself (state, status
bytes, receive buffer, roll) shared by the pty ``PrinterSimulator`` and the
in-memory ``SimulatedPrinter`` backend of the agent's ``Printer`` interface.

Paper out or cover open: like a TM-T20, the printer goes offline, still answers
real-time status, and keeps what it receives in its buffer; it prints that when
paper is loaded / the cover is closed. (So a driver that sent a job into an
empty printer and then sent it again would see it printed twice: ours doesn't.)
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from agent.drivers.escpos import (
    STATUS_ERROR_CAUSE,
    STATUS_OFFLINE_CAUSE,
    STATUS_PAPER_SENSOR,
    STATUS_PRINTER,
    status_from_replies,
    status_request,
)
from agent.drivers.printer import CorruptStatus, Printer, PrinterStatus
from agent.errors import DriverTimeout, PrinterError
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


# ---------------------------------------------------------------- rendering

# ESC t n -> Python codec, for the Epson tables Python can decode.
_CODEPAGES = {0: "cp437", 2: "cp850", 3: "cp860", 4: "cp863", 5: "cp865", 13: "cp857", 14: "cp737",
              15: "iso8859_7", 16: "cp1252", 17: "cp866", 18: "cp852", 19: "cp858", 32: "cp720", 33: "cp775",
              34: "cp855", 35: "cp861", 36: "cp862", 37: "cp864", 38: "cp869", 39: "iso8859_2",
              40: "iso8859_15", 45: "cp1250", 46: "cp1251", 47: "cp1253", 48: "cp1254", 49: "cp1255",
              50: "cp1256", 51: "cp1257", 52: "cp1258", 53: "kz1048"}
_ALIGNS = {0: "left", 1: "center", 2: "right", 48: "left", 49: "center", 50: "right"}
_BARCODES = {0: "UPC-A", 1: "UPC-E", 2: "EAN13", 3: "EAN8", 4: "CODE39", 5: "ITF", 6: "CODABAR",
             65: "UPC-A", 66: "UPC-E", 67: "EAN13", 68: "EAN8", 69: "CODE39", 70: "ITF", 71: "CODABAR",
             72: "CODE93", 73: "CODE128"}
_SYMBOLS = {48: "PDF417", 49: "QR"}  # GS ( k cn
LineKind = Literal["text", "qr", "pdf417", "barcode", "image", "cut"]


@dataclass(frozen=True)
class PrintedLine:
    """One line (or symbol, image, cut) on the paper roll."""

    kind: LineKind
    text: str  # what a person reads; placeholders look like "[QR: data]"
    align: str = "left"
    bold: bool = False
    width: int = 1
    height: int = 1
    data: str | None = None  # decoded QR / barcode data
    image: tuple[int, int, bytes] | None = None  # (width dots, height dots, packed rows, 1 = black)


def decode_code128(data: bytes) -> str:
    """Human-readable text of ESC/POS CODE128 data (``{A``/``{B``/``{C`` select code sets)."""
    out, i, code_set = [], 0, "B"
    while i < len(data):
        byte = data[i]
        if byte == 0x7B and i + 1 < len(data):  # "{"
            nxt = chr(data[i + 1])
            if nxt in "ABC":
                code_set = nxt
            elif nxt == "{":
                out.append("{")
            i += 2
            continue
        out.append(f"{byte:02d}" if code_set == "C" else chr(byte))
        i += 1
    return "".join(out)


class PaperRoll:
    """What came out of the printer, fed with ``EscPosItem``s in order."""

    columns = 48  # Font A on 80 mm paper

    def __init__(self) -> None:
        self.lines: list[PrintedLine] = []
        self.drawer_kicks = 0
        self._reset()

    def _reset(self) -> None:
        self._line = ""
        self.bold = False
        self.width = self.height = 1
        self.align = "left"
        self.codepage = "cp437"
        self._symbol_data: dict[int, bytes] = {}
        self._graphics: tuple[int, int, bytes] | None = None

    @property
    def text(self) -> str:
        """Every line's text, joined by newlines (placeholders included)."""
        return "\n".join(line.text for line in self.lines)

    @property
    def cuts(self) -> int:
        return sum(1 for line in self.lines if line.kind == "cut")

    def codes(self, kind: LineKind) -> list[str]:
        """Data of every printed symbol of ``kind`` ("qr", "barcode", "pdf417")."""
        return [line.data or "" for line in self.lines if line.kind == kind]

    def _add(self, kind: LineKind, text: str, data: str | None = None,
             image: tuple[int, int, bytes] | None = None) -> None:
        self.lines.append(PrintedLine(kind, text, self.align, self.bold, self.width, self.height, data, image))

    def _flush(self) -> None:
        self._add("text", self._line)
        self._line = ""

    def feed(self, items: list[EscPosItem]) -> None:
        for item in items:
            if item.kind == "text":
                self._line += item.raw.decode(self.codepage, errors="replace")
            elif item.kind == "control":
                self._control(item.name)
            elif item.kind == "command":
                handler = _ROLL_COMMANDS.get(item.name)
                if handler is not None:
                    handler(self, item.raw)

    def _control(self, name: str) -> None:
        if name in ("LF", "FF"):
            self._flush()
        elif name == "HT":
            self._line += " " * (8 - len(self._line) % 8)
        elif name == "CAN":
            self._line = ""

    # Command handlers get the whole command's bytes.
    def _init(self, raw: bytes) -> None:
        self._reset()

    def _print_mode(self, raw: bytes) -> None:  # ESC ! n
        self.bold = bool(raw[2] & 0x08)
        self.height = 2 if raw[2] & 0x10 else 1
        self.width = 2 if raw[2] & 0x20 else 1

    def _emphasis(self, raw: bytes) -> None:  # ESC E n
        self.bold = bool(raw[2] & 1)

    def _size(self, raw: bytes) -> None:  # GS ! n
        self.width, self.height = (raw[2] >> 4 & 7) + 1, (raw[2] & 7) + 1

    def _justify(self, raw: bytes) -> None:  # ESC a n
        self.align = _ALIGNS.get(raw[2], self.align)

    def _codepage(self, raw: bytes) -> None:  # ESC t n
        self.codepage = _CODEPAGES.get(raw[2], "cp437")

    def _feed_lines(self, raw: bytes) -> None:  # ESC d n
        if self._line:
            self._flush()
        for _ in range(raw[2]):
            self._add("text", "")

    def _cut(self, raw: bytes) -> None:  # GS V m [n]
        if self._line:
            self._flush()
        self._add("cut", "-" * 14 + " cut " + "-" * 14)

    def _drawer(self, raw: bytes) -> None:  # ESC p
        self.drawer_kicks += 1

    def _symbol(self, raw: bytes) -> None:  # GS ( k pL pH cn fn m d...
        cn, fn = raw[5], raw[6] if len(raw) > 6 else 0
        if cn not in _SYMBOLS:
            return
        if fn == 80:  # store
            self._symbol_data[cn] = raw[8:]
        elif fn == 81:  # print what was stored
            data = self._symbol_data.get(cn, b"").decode("utf-8", errors="replace")
            name = _SYMBOLS[cn]
            self._add("qr" if cn == 49 else "pdf417", f"[{name}: {data}]", data=data)

    def _barcode(self, raw: bytes) -> None:  # GS k m ...
        m = raw[2]
        data = raw[3:-1] if m <= 6 else raw[4:]
        name = _BARCODES.get(m, f"m={m}")
        text = decode_code128(data) if name == "CODE128" else data.decode("ascii", errors="replace")
        self._add("barcode", f"[BARCODE {name}: {text}]", data=text)

    def _raster(self, raw: bytes) -> None:  # GS v 0 m xL xH yL yH d...
        width_bytes, height = _u16(raw, 4), _u16(raw, 6)
        self._image(width_bytes * 8, height, raw[8:])

    def _graphics_cmd(self, raw: bytes) -> None:  # GS ( L pL pH m fn ...
        fn = raw[6]
        if fn == 112 and raw[7] == 48:  # store monochrome raster: a bx by c xL xH yL yH d...
            self._graphics = (_u16(raw, 11), _u16(raw, 13), raw[15:])
        elif fn in (50, 2) and self._graphics is not None:  # print the stored graphics
            self._image(*self._graphics)

    def _image(self, width: int, height: int, data: bytes) -> None:
        if self._line:
            self._flush()
        self._add("image", f"[IMAGE {width}x{height}]", image=(width, height, data))

    def to_png(self, path: str | Path | None = None, width: int = 576):
        """Draw the roll (576 dots: 80 mm paper); returns the PIL image, saved to ``path`` if given.

        Needs Pillow (``pip install .[dev]``). Symbols are boxes with their data written in.
        """
        from PIL import Image, ImageDraw, ImageFont, ImageOps

        fonts: dict[int, Any] = {}

        def font(height: int):
            if height not in fonts:
                try:
                    fonts[height] = ImageFont.load_default(size=11 * height)
                except (TypeError, ImportError, OSError):  # old Pillow or no FreeType
                    fonts[height] = ImageFont.load_default()
            return fonts[height]

        blocks: list[tuple[PrintedLine, Any]] = []
        for line in self.lines:
            if line.kind == "image" and line.image is not None:
                w, h, data = line.image
                need = (w + 7) // 8 * h
                img = Image.frombytes("1", (w, h), data[:need].ljust(need, b"\0"), "raw", "1;I")
                blocks.append((line, ImageOps.contain(img.convert("L"), (width, max(1, h)))))
            else:
                blocks.append((line, None))
        heights = [(b.height if b is not None else
                    {"qr": 120, "pdf417": 60, "barcode": 60, "cut": 16}.get(line.kind, 14 * line.height))
                   for line, b in blocks]
        page = Image.new("L", (width, sum(heights) + 8), 255)
        draw = ImageDraw.Draw(page)
        y = 4
        for (line, bitmap), h in zip(blocks, heights):
            if bitmap is not None:
                page.paste(bitmap, (_x(line.align, bitmap.width, width), y))
            elif line.kind == "cut":
                draw.line((0, y + h // 2, width, y + h // 2), fill=0)
            elif _draw_symbol(page, line, width, y, h):
                pass  # drawn module for module by a real encoder, so a decoder can read the PNG
            elif line.kind in ("qr", "pdf417", "barcode"):
                box_w = h if line.kind == "qr" else width * 2 // 3
                x = _x(line.align, box_w, width)
                draw.rectangle((x, y + 2, x + box_w, y + h - 2), outline=0)
                draw.text((x + 4, y + 6), f"{line.kind.upper()}\n{line.data or ''}"[:80], fill=0, font=font(1))
            elif line.text:
                f = font(line.height)
                text_w = int(draw.textlength(line.text, font=f))
                draw.text((_x(line.align, text_w, width), y), line.text, fill=0, font=f,
                          stroke_width=1 if line.bold else 0, stroke_fill=0)
            y += h
        if path is not None:
            page.save(path, "PNG")
        return page


def _draw_symbol(page, line: PrintedLine, width: int, y: int, h: int) -> bool:
    """Draw a QR code (segno) or a CODE128 / EAN13 barcode (python-barcode) as the printer would,
    if those encoders are installed; False leaves the line to the placeholder box."""
    from PIL import ImageDraw

    data = line.data or ""
    try:
        if line.kind == "qr":
            import segno

            matrix = segno.make_qr(data, error="m", boost_error=False).matrix
            cell = max(1, (h - 8) // len(matrix))
            rows = [[bool(v) for v in row] for row in matrix]
        elif line.kind == "barcode" and line.text.startswith(("[BARCODE CODE128:", "[BARCODE EAN13:")):
            import barcode
            from barcode.errors import BarcodeError

            kind = "code128" if "CODE128" in line.text else "ean13"
            try:
                modules = barcode.get(kind, data if kind == "code128" else data[:12]).build()[0]
            except BarcodeError:
                return False
            cell = 2
            rows = [[m == "1" for m in modules]] * ((h - 8) // cell)
        else:
            return False
    except (ImportError, ValueError):
        return False
    draw = ImageDraw.Draw(page)
    x0 = _x(line.align, len(rows[0]) * cell, width)
    for r, row in enumerate(rows):
        for c, dark in enumerate(row):
            if dark:
                draw.rectangle((x0 + c * cell, y + 4 + r * cell, x0 + (c + 1) * cell - 1, y + 4 + (r + 1) * cell - 1), fill=0)
    return True


def _x(align: str, item_width: int, page_width: int) -> int:
    return {"center": (page_width - item_width) // 2, "right": page_width - item_width}.get(align, 0)


_ROLL_COMMANDS: dict[str, Callable[[PaperRoll, bytes], None]] = {
    "ESC @": PaperRoll._init, "ESC !": PaperRoll._print_mode, "ESC E": PaperRoll._emphasis,
    "GS !": PaperRoll._size, "ESC a": PaperRoll._justify, "ESC t": PaperRoll._codepage,
    "ESC d": PaperRoll._feed_lines, "GS V": PaperRoll._cut, "ESC p": PaperRoll._drawer,
    "GS ( k": PaperRoll._symbol, "GS k": PaperRoll._barcode, "GS v 0": PaperRoll._raster,
    "GS ( L": PaperRoll._graphics_cmd,
}


# ---------------------------------------------------------------- the printer

Paper = Literal["ok", "near_end", "out"]
ErrorKind = Literal["recoverable", "autocutter", "unrecoverable", "auto_recoverable"]
_ERROR_BITS: dict[str, int] = {"recoverable": 0x04, "autocutter": 0x08, "unrecoverable": 0x20, "auto_recoverable": 0x40}


class PrinterModel:
    """A TM-T20-like printer without a wire: state is ``paper``, ``cover_open``,
    ``online``, ``error`` and ``powered``. Switched off (``powered=False``) it
    answers nothing and receives nothing, like a dead serial line.

    ``receive(data)`` takes the host's bytes and returns the status replies.
    Printable items go to ``roll``; while the printer cannot print (paper out,
    cover open, error) they wait in ``held`` and print once it can.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.parser = EscPosStreamParser()
        self.roll = PaperRoll()
        self.received = bytearray()  # every non-status byte, in order
        self.items: list[EscPosItem] = []
        self.held: list[EscPosItem] = []
        self.status_requests: list[int] = []
        self.paper: Paper = "ok"
        self.cover_open = False
        self.online = True  # False: offline for a reason not modelled otherwise
        self.error: ErrorKind | None = None
        self.powered = True
        self.vanished = False
        self._corrupt: list[int] = []

    # Verbs a test or demo drives.
    def paper_out(self) -> None:
        self.set_state(paper="out")

    def paper_low(self) -> None:
        self.set_state(paper="near_end")

    def load_paper(self) -> None:
        self.set_state(paper="ok")

    def open_cover(self) -> None:
        self.set_state(cover_open=True)

    def close_cover(self) -> None:
        self.set_state(cover_open=False)

    def corrupt_next_status(self, byte: int = 0x00) -> None:
        """The next status reply is ``byte`` (default 0x00, which breaks the fixed bits)."""
        with self._lock:
            self._corrupt.append(byte)

    def vanish(self) -> None:
        """Unplugged: no answers, nothing received, and links to it fail."""
        with self._lock:
            self.vanished, self.powered = True, False

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
            if self.can_print and self.held:
                self.roll.feed(self.held)
                self.held.clear()

    @property
    def can_print(self) -> bool:
        with self._lock:
            return self.powered and self.online and not self.cover_open and self.paper != "out" and self.error is None

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

    def receive(self, data: bytes) -> bytes:
        """Handle the host's bytes; return the status replies to send back."""
        with self._lock:
            if not self.powered:
                return b""
            replies = bytearray()
            for item in self.parser.feed(data):
                if item.kind == "status_request":
                    n = item.raw[2]
                    self.status_requests.append(n)
                    reply = self.status_byte(n)
                    if reply is not None:
                        replies.append(self._corrupt.pop(0) if self._corrupt else reply)
                    continue
                self.received += item.raw
                self.items.append(item)
                if self.can_print:
                    self.roll.feed([item])
                else:
                    self.held.append(item)
            return bytes(replies)


class PrinterSimulator(PtySimulator):
    """A ``PrinterModel`` on a pty: the real driver opens ``path`` with pyserial."""

    name = "printer-simulator"

    def __init__(self, model: PrinterModel | None = None) -> None:
        super().__init__()
        self.model = model or PrinterModel()

    # The model's record and verbs, on the simulator for convenience.
    @property
    def received(self) -> bytearray:
        return self.model.received

    @property
    def items(self) -> list[EscPosItem]:
        return self.model.items

    @property
    def status_requests(self) -> list[int]:
        return self.model.status_requests

    @property
    def roll(self) -> PaperRoll:
        return self.model.roll

    def set_state(self, **changes) -> None:
        self.model.set_state(**changes)

    def status_byte(self, n: int) -> int | None:
        return self.model.status_byte(n)

    def paper_out(self) -> None:
        self.model.paper_out()

    def paper_low(self) -> None:
        self.model.paper_low()

    def load_paper(self) -> None:
        self.model.load_paper()

    def open_cover(self) -> None:
        self.model.open_cover()

    def close_cover(self) -> None:
        self.model.close_cover()

    def corrupt_next_status(self, byte: int = 0x00) -> None:
        self.model.corrupt_next_status(byte)

    def vanish(self) -> None:
        """Unplug: the pty closes, so an open driver's next read or write fails (EIO)."""
        self.model.vanish()
        self.stop()

    def on_receive(self, data: bytes) -> None:
        replies = self.model.receive(data)
        if replies:
            self.pty.write(replies)


class SimulatedPrinter(Printer):
    """The agent's ``Printer`` interface on an in-memory ``PrinterModel`` (laptop demos, tests).

    Status goes through the real driver's byte parser, so a corrupt reply is
    rejected exactly as on the wire.
    """

    def __init__(self, model: PrinterModel | None = None, device_id: str = "printer") -> None:
        self.model = model or PrinterModel()
        self.device_id = device_id
        self.corrupt_replies = 0
        self._closed = False

    def _exchange(self, data: bytes) -> bytes:
        if self._closed:
            raise PrinterError("printer port is closed")
        if self.model.vanished:
            raise PrinterError("printer port failed: device vanished")
        return self.model.receive(data)

    def status(self) -> PrinterStatus:
        replies: dict[int, int] = {}
        for n in (STATUS_PRINTER, STATUS_OFFLINE_CAUSE, STATUS_ERROR_CAUSE, STATUS_PAPER_SENSOR):
            reply = self._exchange(status_request(n))
            if not reply:
                if n == STATUS_PAPER_SENSOR:
                    break
                raise DriverTimeout(f"printer did not answer DLE EOT {n} (switched off or unplugged?)")
            replies[n] = reply[0]
        try:
            return status_from_replies(replies)
        except CorruptStatus:
            self.corrupt_replies += 1
            raise

    def write(self, data: bytes) -> None:
        self._exchange(data)

    def close(self) -> None:
        self._closed = True
