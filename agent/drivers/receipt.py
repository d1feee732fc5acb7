"""What to print (a receipt or a label) and its ESC/POS encoding: pure, no I/O.

A :class:`Receipt` is a list of blocks (text lines, a QR code, a CODE128
barcode, a feed, a cut). It round-trips through a plain dict so a print queue
can store it as JSON and a fleet command can carry it. :meth:`Receipt.encode`
turns it into the bytes an Epson TM-T20 class printer expects; content that can
never print (a QR code too big for a symbol, a barcode character CODE128 code
set B cannot carry, control bytes inside text) raises :class:`InvalidPrintJob`
before a single byte reaches the printer.

Commands used (Epson ESC/POS Application Programming Guide):
``ESC @`` init, ``ESC t n`` code page, ``ESC a n`` justification, ``ESC E n``
emphasis, ``GS ! n`` character size, ``LF``, ``ESC d n`` feed n lines,
``GS ( k`` QR code (fn 165 model, 167 module size, 169 error correction,
180 store, 181 print), ``GS h/w/H`` barcode height, width, HRI position,
``GS k m n d1..dn`` (function B, m = 73: CODE128), ``GS V m n`` cut after feed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal, Union

from agent.drivers.printer import InvalidPrintJob

Align = Literal["left", "center", "right"]
_ALIGN = {"left": 0, "center": 1, "right": 2}
_QR_ECC = {"L": 48, "M": 49, "Q": 50, "H": 51}
# Byte-mode capacity of a version 40 QR symbol per error-correction level.
_QR_MAX_BYTES = {"L": 2953, "M": 2331, "Q": 1663, "H": 1273}
CODEPAGE = "cp437"  # ESC t 0, the power-on default of Epson printers

ESC_INIT = b"\x1b@"
LF = b"\n"


@dataclass(frozen=True)
class Text:
    text: str
    bold: bool = False
    width: int = 1  # character width multiplier 1..8
    height: int = 1  # character height multiplier 1..8
    align: Align = "left"
    kind: Literal["text"] = "text"


@dataclass(frozen=True)
class QRCode:
    data: str
    module: int = 6  # module size in dots, 1..16
    ecc: Literal["L", "M", "Q", "H"] = "M"
    align: Align = "center"
    kind: Literal["qr"] = "qr"


@dataclass(frozen=True)
class Barcode:
    data: str  # CODE128, code set B: printable ASCII
    height: int = 80  # dots, 1..255
    module: int = 2  # narrowest bar in dots, 2..6
    align: Align = "center"
    kind: Literal["barcode"] = "barcode"


@dataclass(frozen=True)
class Feed:
    lines: int = 1
    kind: Literal["feed"] = "feed"


@dataclass(frozen=True)
class Cut:
    feed: int = 3  # extra feed past the cutter position, in vertical motion units
    partial: bool = True  # a TM-T20's autocutter only cuts partially anyway
    kind: Literal["cut"] = "cut"


Block = Union[Text, QRCode, Barcode, Feed, Cut]
_BLOCKS: dict[str, type] = {"text": Text, "qr": QRCode, "barcode": Barcode, "feed": Feed, "cut": Cut}


@dataclass
class Receipt:
    """A builder: ``Receipt().text("PopKit", bold=True).qr("T-1").barcode("T-1").cut()``."""

    blocks: list[Block] = field(default_factory=list)

    def text(self, text: str, *, bold: bool = False, width: int = 1, height: int = 1,
             align: Align = "left") -> Receipt:
        self.blocks.append(Text(text, bold, width, height, align))
        return self

    def qr(self, data: str, *, module: int = 6, ecc: Literal["L", "M", "Q", "H"] = "M",
           align: Align = "center") -> Receipt:
        self.blocks.append(QRCode(data, module, ecc, align))
        return self

    def barcode(self, data: str, *, height: int = 80, module: int = 2, align: Align = "center") -> Receipt:
        self.blocks.append(Barcode(data, height, module, align))
        return self

    def feed(self, lines: int = 1) -> Receipt:
        self.blocks.append(Feed(lines))
        return self

    def cut(self, feed: int = 3, partial: bool = True) -> Receipt:
        self.blocks.append(Cut(feed, partial))
        return self

    def to_dict(self) -> dict:
        return {"blocks": [asdict(b) for b in self.blocks]}

    @classmethod
    def from_dict(cls, data: object) -> Receipt:
        """Inverse of :meth:`to_dict`; a malformed description raises InvalidPrintJob."""
        try:
            blocks = []
            for raw in data["blocks"]:  # type: ignore[index]
                raw = dict(raw)
                blocks.append(_BLOCKS[raw.pop("kind")](**raw))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidPrintJob(f"not a print job description: {exc!r}") from exc
        return cls(blocks)

    def encode(self) -> bytes:
        """The whole job as ESC/POS bytes, starting with ``ESC @`` so no earlier mode leaks in."""
        if not self.blocks:
            raise InvalidPrintJob("empty print job")
        out = bytearray(ESC_INIT + b"\x1bt\x00")
        for block in self.blocks:
            out += _ENCODERS[type(block)](block)
        return bytes(out)


def _int_in(name: str, value: object, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidPrintJob(f"{name} must be an integer {low}..{high}, not {value!r}")
    return value


def _align(value: object) -> bytes:
    if value not in _ALIGN:
        raise InvalidPrintJob(f"align must be left, center or right, not {value!r}")
    return b"\x1ba" + bytes((_ALIGN[value],))  # type: ignore[index]


def encode_text(block: Text) -> bytes:
    if not isinstance(block.text, str):
        raise InvalidPrintJob(f"text must be a string, not {type(block.text).__name__}")
    width = _int_in("text width", block.width, 1, 8)
    height = _int_in("text height", block.height, 1, 8)
    out = bytearray(_align(block.align))
    out += b"\x1bE" + bytes((1 if block.bold else 0,))
    out += b"\x1d!" + bytes(((width - 1) << 4 | (height - 1),))
    for line in block.text.split("\n"):
        data = line.encode(CODEPAGE, errors="replace")
        bad = sorted({f"0x{b:02X}" for b in data if b < 0x20 or b == 0x7F})
        if bad:
            raise InvalidPrintJob(f"text contains control bytes {', '.join(bad)}: {line[:40]!r}")
        out += data + LF
    out += b"\x1bE\x00\x1d!\x00"  # back to plain text for whatever follows
    return bytes(out)


def _gs_k_qr(fn: int, params: bytes) -> bytes:
    body = bytes((0x31, fn)) + params  # cn = 49: QR code
    return b"\x1d(k" + len(body).to_bytes(2, "little") + body


def encode_qr(block: QRCode) -> bytes:
    if block.ecc not in _QR_ECC:
        raise InvalidPrintJob(f"QR error correction must be L, M, Q or H, not {block.ecc!r}")
    module = _int_in("QR module size", block.module, 1, 16)
    data = block.data.encode("utf-8") if isinstance(block.data, str) else None
    if not data:
        raise InvalidPrintJob("QR code needs some data")
    if len(data) > _QR_MAX_BYTES[block.ecc]:
        raise InvalidPrintJob(
            f"QR data is {len(data)} bytes; at error correction {block.ecc} a symbol holds {_QR_MAX_BYTES[block.ecc]}")
    return (
        _align(block.align)
        + _gs_k_qr(65, b"\x32\x00")  # fn 165: model 2
        + _gs_k_qr(67, bytes((module,)))  # fn 167: module size
        + _gs_k_qr(69, bytes((_QR_ECC[block.ecc],)))  # fn 169: error correction
        + _gs_k_qr(80, b"\x30" + data)  # fn 180: store the data
        + _gs_k_qr(81, b"\x30")  # fn 181: print the stored symbol
        + LF
    )


def encode_barcode(block: Barcode) -> bytes:
    data = block.data if isinstance(block.data, str) else ""
    if not data:
        raise InvalidPrintJob("barcode needs some data")
    bad = sorted({c for c in data if not 0x20 <= ord(c) <= 0x7E})
    if bad:
        raise InvalidPrintJob(f"CODE128 code set B cannot carry {''.join(bad)!r}")
    # "{B" selects code set B; a literal "{" is sent as "{{".
    payload = b"{B" + data.replace("{", "{{").encode("ascii")
    if len(payload) > 255:
        raise InvalidPrintJob(f"barcode data too long ({len(data)} characters)")
    height = _int_in("barcode height", block.height, 1, 255)
    module = _int_in("barcode module", block.module, 2, 6)
    return (
        _align(block.align)
        + b"\x1dh" + bytes((height,))
        + b"\x1dw" + bytes((module,))
        + b"\x1dH\x02"  # human-readable text below the bars
        + b"\x1dkI" + bytes((len(payload),)) + payload  # function B, m = 73: CODE128
        + LF
    )


def encode_feed(block: Feed) -> bytes:
    return b"\x1bd" + bytes((_int_in("feed lines", block.lines, 0, 255),))


def encode_cut(block: Cut) -> bytes:
    # GS V 65/66 n: feed to the cutter plus n units, then cut (66: partial).
    return b"\x1dV" + bytes((66 if block.partial else 65, _int_in("cut feed", block.feed, 0, 255)))


_ENCODERS: dict[type, Callable[[Any], bytes]] = {Text: encode_text, QRCode: encode_qr, Barcode: encode_barcode, Feed: encode_feed, Cut: encode_cut}


def self_test_label(device_id: str, note: str = "printer self-test") -> Receipt:
    """The short label a kit prints at power-up to prove text, QR, barcode and cutter work."""
    return (
        Receipt()
        .text("PopKit", bold=True, width=2, height=2, align="center")
        .text(f"{device_id}: {note}", align="center")
        .qr(f"popkit:selftest:{device_id}", module=4)
        .barcode("SELFTEST", height=40)
        .cut()
    )
