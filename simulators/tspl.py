"""A TSPL label printer (TSC-style, 203 dpi) on a pty: parses what it receives, draws each label.

``TsplModel`` is the printer: it answers the real-time ``<ESC>!?`` status from its state at once
(also in the middle of a job), splits everything else into CRLF-terminated commands and runs
SIZE, GAP, DIRECTION, CLS, TEXT, BARCODE ("EAN13", "128"), QRCODE and PRINT on a canvas of the
label's size. Barcodes are drawn bar for bar by python-barcode and segno (real encoders), so a
decoder can read the PNG back. A command it does not know or cannot run is counted in
``bad_commands`` with the reason, and nothing is drawn for it.

Paper out, head or cover open, paused: like a real printer it still answers status and keeps
what it receives; it runs those commands when the fault clears.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.drivers.tspl import STATUS_REQUEST
from simulators.pty import PtySimulator

DPI = 203
_FONTS = {"1": (8, 12), "2": (12, 20), "3": (16, 24), "4": (24, 32), "5": (32, 48)}
_STATUS_BITS = ("head_open", "paper_jam", "paper_out", "ribbon_out", "paused", "printing", "cover_open",
                "over_temperature")


class TsplCommandError(ValueError):
    pass


def split_args(text: str) -> list[str]:
    """Comma-separated TSPL parameters; quoted strings keep commas, ``\\["]`` is a quote inside one."""
    args: list[str] = []
    cur: list[str] = []
    i, quoted = 0, False
    while i < len(text):
        c = text[i]
        if quoted:
            if text.startswith('\\["]', i):
                cur.append('"')
                i += 4
                continue
            if c == '"':
                quoted = False
            else:
                cur.append(c)
        elif c == '"':
            quoted = True
            cur.append("\0")  # marks a string argument
        elif c == ",":
            args.append("".join(cur).strip())
            cur = []
        else:
            cur.append(c)
        i += 1
    if quoted:
        raise TsplCommandError("unterminated string")
    args.append("".join(cur).strip())
    return args


def _string(arg: str, what: str) -> str:
    if not arg.startswith("\0"):
        raise TsplCommandError(f"{what} must be a quoted string, got {arg!r}")
    return arg[1:]


def _int(arg: str, what: str, low: int = 0, high: int = 100_000) -> int:
    try:
        value = int(arg)
    except ValueError:
        raise TsplCommandError(f"{what} must be an integer, got {arg!r}") from None
    if not low <= value <= high:
        raise TsplCommandError(f"{what} {value} is outside {low}..{high}")
    return value


def _mm(arg: str, what: str) -> float:
    value = arg.strip().removesuffix("mm").strip()
    try:
        return float(value)
    except ValueError:
        raise TsplCommandError(f"{what} must be a length in mm, got {arg!r}") from None


@dataclass
class Label:
    """One printed label design: its image and how many were printed."""

    image: Any  # PIL.Image, mode "L"
    copies: int
    texts: list[str] = field(default_factory=list)
    symbols: list[tuple[str, str]] = field(default_factory=list)  # (type, data as sent)

    def to_png(self, path: str | Path | None = None, margin: int = 16):
        """The label on white backing ``margin`` dots wide (a decoder needs the quiet zone)."""
        from PIL import ImageOps

        img = ImageOps.expand(self.image, border=margin, fill=255)
        if path is not None:
            img.save(path, "PNG")
        return img


class TsplModel:
    """The printer: status, receive buffer, command parser, canvas and printed labels."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.state = dict.fromkeys(_STATUS_BITS, False)
        self.received = bytearray()
        self.commands: list[str] = []
        self.bad_commands: list[tuple[str, str]] = []  # (command, reason)
        self.status_requests = 0
        self.labels: list[Label] = []
        self.width, self.height = 320, 240  # dots: a 40 x 30 mm label until SIZE says otherwise
        self.gap_mm = 2.0
        self.direction = 0
        self._buf = bytearray()
        self._held: list[str] = []
        self._corrupt: bytes | None = None
        self._canvas: Any = None
        self._texts: list[str] = []
        self._symbols: list[tuple[str, str]] = []

    # --- state ---------------------------------------------------------------------------------
    def set_state(self, **flags: bool) -> None:
        with self.lock:
            for name, value in flags.items():
                if name not in self.state:
                    raise ValueError(f"unknown TSPL status flag {name!r}")
                self.state[name] = bool(value)
            if self.can_print:
                held, self._held = self._held, []
                for line in held:
                    self._run(line)

    @property
    def can_print(self) -> bool:
        s = self.state
        return not (s["head_open"] or s["paper_jam"] or s["paper_out"] or s["ribbon_out"] or s["paused"]
                    or s["cover_open"])

    def corrupt_next_status(self, reply: bytes = b"\x00\xff") -> None:
        """Answer the next ``<ESC>!?`` with ``reply`` (line noise, a wrong device) instead of the status."""
        with self.lock:
            self._corrupt = reply

    def status_byte(self) -> int:
        return sum(1 << i for i, name in enumerate(_STATUS_BITS) if self.state[name])

    # --- the wire ------------------------------------------------------------------------------
    def receive(self, data: bytes) -> bytes:
        """Bytes from the host; returns the status replies to send back."""
        with self.lock:
            self.received += data
            self._buf += data
            replies = bytearray()
            # <ESC>!? is real-time: answered wherever it falls, and not part of a command line.
            while (i := self._buf.find(STATUS_REQUEST)) >= 0:
                del self._buf[i:i + len(STATUS_REQUEST)]
                self.status_requests += 1
                if self._corrupt is not None:
                    replies += self._corrupt
                    self._corrupt = None
                else:
                    replies.append(self.status_byte())
            while (end := self._buf.find(b"\n")) >= 0:
                raw = bytes(self._buf[:end]).rstrip(b"\r")
                del self._buf[:end + 1]
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    self.bad_commands.append((raw.decode("utf-8", "replace"), "not UTF-8 text"))
                    continue
                if not line.strip():
                    continue
                self.commands.append(line)
                if self.can_print:
                    self._run(line)
                else:
                    self._held.append(line)
            return bytes(replies)

    def _run(self, line: str) -> None:
        name, _, rest = line.strip().partition(" ")
        handler = _HANDLERS.get(name.upper())
        if handler is None:
            self.bad_commands.append((line, f"unknown command {name!r}"))
            return
        try:
            handler(self, split_args(rest) if rest.strip() else [])
        except TsplCommandError as exc:
            self.bad_commands.append((line, str(exc)))

    # --- commands ------------------------------------------------------------------------------
    def _size(self, args: list[str]) -> None:
        if len(args) != 2:
            raise TsplCommandError("SIZE takes width,height")
        w, h = _mm(args[0], "SIZE width"), _mm(args[1], "SIZE height")
        if not (0 < w <= 120 and 0 < h <= 1000):
            raise TsplCommandError(f"SIZE {w} x {h} mm is outside what the printer takes")
        self.width, self.height = round(w * DPI / 25.4), round(h * DPI / 25.4)
        self._canvas = None

    def _gap(self, args: list[str]) -> None:
        if len(args) != 2:
            raise TsplCommandError("GAP takes distance,offset")
        self.gap_mm = _mm(args[0], "GAP distance")

    def _direction(self, args: list[str]) -> None:
        if len(args) not in (1, 2):
            raise TsplCommandError("DIRECTION takes n[,mirror]")
        self.direction = _int(args[0], "DIRECTION", 0, 1)

    def _codepage(self, args: list[str]) -> None:
        # Text is decoded as UTF-8 whatever the code page; only the names are checked.
        if len(args) != 1 or args[0].upper() not in ("UTF-8", "437", "850", "852", "1252"):
            raise TsplCommandError(f"CODEPAGE {','.join(args)!r} is not one this printer has")

    def _cls(self, args: list[str]) -> None:
        from PIL import Image

        if args:
            raise TsplCommandError("CLS takes no parameters")
        self._canvas = Image.new("L", (self.width, self.height), 255)
        self._texts, self._symbols = [], []

    def _need_canvas(self) -> Any:
        if self._canvas is None:
            raise TsplCommandError("nothing to draw on: send SIZE and CLS first")
        return self._canvas

    def _text(self, args: list[str]) -> None:
        from PIL import ImageDraw, ImageFont

        if len(args) != 7:
            raise TsplCommandError("TEXT takes x,y,\"font\",rotation,x-mul,y-mul,\"content\"")
        x, y = _int(args[0], "TEXT x"), _int(args[1], "TEXT y")
        font = _string(args[2], "TEXT font")
        if font not in _FONTS:
            raise TsplCommandError(f"TEXT font {font!r} is not one of {', '.join(_FONTS)}")
        _int(args[3], "TEXT rotation", 0, 270)
        xm, ym = _int(args[4], "TEXT x-mul", 1, 10), _int(args[5], "TEXT y-mul", 1, 10)
        text = _string(args[6], "TEXT content")
        cw, ch = _FONTS[font]
        canvas = self._need_canvas()
        if x + len(text) * cw * xm > self.width or y + ch * ym > self.height:
            raise TsplCommandError(f"TEXT {text!r} runs off the {self.width}x{self.height} dot label")
        try:
            f = ImageFont.load_default(size=ch * ym)
        except (TypeError, OSError):  # old Pillow or no FreeType
            f = ImageFont.load_default()
        ImageDraw.Draw(canvas).text((x, y), text, fill=0, font=f)
        self._texts.append(text)

    def _bars(self, x: int, y: int, modules: str, narrow: int, height: int) -> None:
        from PIL import ImageDraw

        draw = ImageDraw.Draw(self._need_canvas())
        if x + len(modules) * narrow > self.width or y + height > self.height:
            raise TsplCommandError(f"barcode of {len(modules) * narrow}x{height} dots at {x},{y} runs off the label")
        for i, bit in enumerate(modules):
            if bit == "1":
                draw.rectangle((x + i * narrow, y, x + (i + 1) * narrow - 1, y + height - 1), fill=0)

    def _barcode(self, args: list[str]) -> None:
        import barcode as pybarcode
        from PIL import ImageDraw

        if len(args) != 9:
            raise TsplCommandError("BARCODE takes x,y,\"type\",height,readable,rotation,narrow,wide,\"content\"")
        x, y = _int(args[0], "BARCODE x"), _int(args[1], "BARCODE y")
        kind = _string(args[2], "BARCODE type")
        height = _int(args[3], "BARCODE height", 1, 6000)
        readable = _int(args[4], "BARCODE readable", 0, 3)
        _int(args[5], "BARCODE rotation", 0, 270)
        narrow = _int(args[6], "BARCODE narrow", 1, 10)
        _int(args[7], "BARCODE wide", 1, 10)
        content = _string(args[8], "BARCODE content")
        self._need_canvas()
        if kind == "EAN13":
            if not (content.isascii() and content.isdigit() and len(content) in (12, 13)):
                raise TsplCommandError(f"EAN13 content must be 12 or 13 digits, got {content!r}")
            code = pybarcode.get("ean13", content[:12])
            if len(content) == 13 and code.get_fullcode() != content:
                raise TsplCommandError(f"EAN13 {content!r} has a wrong check digit (should be {code.get_fullcode()[-1]})")
            human = code.get_fullcode()
        elif kind == "128":
            if not content or any(not 0x20 <= ord(c) <= 0x7E for c in content):
                raise TsplCommandError(f"128 content {content!r} must be printable ASCII")
            code = pybarcode.get("code128", content)
            human = content
        else:
            raise TsplCommandError(f"barcode type {kind!r} is not supported (EAN13, 128)")
        modules = code.build()[0]
        self._bars(x, y, modules, narrow, height)
        if readable:
            ImageDraw.Draw(self._canvas).text((x + 4, y + height + 2), human, fill=0)
        self._symbols.append((kind, content))

    def _qrcode(self, args: list[str]) -> None:
        import segno
        from PIL import ImageDraw

        if len(args) < 7:
            raise TsplCommandError("QRCODE takes x,y,ECC,cell,mode,rotation,\"content\"")
        x, y = _int(args[0], "QRCODE x"), _int(args[1], "QRCODE y")
        ecc = args[2].upper()
        if ecc not in ("L", "M", "Q", "H"):
            raise TsplCommandError(f"QRCODE error correction {args[2]!r} is not L, M, Q or H")
        cell = _int(args[3], "QRCODE cell width", 1, 10)
        if args[4].upper() not in ("A", "M"):
            raise TsplCommandError(f"QRCODE mode {args[4]!r} is not A or M")
        _int(args[5], "QRCODE rotation", 0, 270)
        content = _string(args[-1], "QRCODE content")
        if not content:
            raise TsplCommandError("QRCODE content is empty")
        matrix = segno.make_qr(content, error=ecc.lower(), boost_error=False).matrix
        size = len(matrix) * cell
        if x + size > self.width or y + size > self.height:
            raise TsplCommandError(f"QR code of {size} dots at {x},{y} runs off the label")
        draw = ImageDraw.Draw(self._need_canvas())
        for r, row in enumerate(matrix):
            for c, dark in enumerate(row):
                if dark:
                    draw.rectangle((x + c * cell, y + r * cell, x + (c + 1) * cell - 1, y + (r + 1) * cell - 1), fill=0)
        self._symbols.append(("QRCODE", content))

    def _print(self, args: list[str]) -> None:
        if len(args) not in (1, 2):
            raise TsplCommandError("PRINT takes sets[,copies]")
        sets = _int(args[0], "PRINT sets", 1, 999_999)
        copies = _int(args[1], "PRINT copies", 1, 999_999) if len(args) == 2 else 1
        canvas = self._need_canvas()
        self.labels.append(Label(canvas.copy(), sets * copies, list(self._texts), list(self._symbols)))


_HANDLERS = {
    "CODEPAGE": TsplModel._codepage, "SIZE": TsplModel._size, "GAP": TsplModel._gap, "DIRECTION": TsplModel._direction, "CLS": TsplModel._cls,
    "TEXT": TsplModel._text, "BARCODE": TsplModel._barcode, "QRCODE": TsplModel._qrcode, "PRINT": TsplModel._print,
}


class TsplSimulator(PtySimulator):
    """A ``TsplModel`` on a pty: the real driver opens ``path`` with pyserial."""

    name = "tspl-simulator"

    def __init__(self, model: TsplModel | None = None) -> None:
        super().__init__()
        self.model = model or TsplModel()

    @property
    def labels(self) -> list[Label]:
        return self.model.labels

    @property
    def bad_commands(self) -> list[tuple[str, str]]:
        return self.model.bad_commands

    def set_state(self, **flags: bool) -> None:
        self.model.set_state(**flags)

    def on_receive(self, data: bytes) -> None:
        replies = self.model.receive(data)
        if replies:
            self.pty.write(replies)
