"""Label templates as data, and their renderers: TSPL, ZPL and an ESC/POS job description.

A :class:`LabelTemplate` says where each field (name, variant, price, SKU text) and the barcode
sit on a label of a given size. ``render_tspl`` / ``render_zpl`` turn a template and a product
into the printer's command text; ``escpos_job`` turns them into the job description that the
agent's ``agent.drivers.receipt.Receipt.from_dict`` encodes, so the ESC/POS bytes stay in one
place (kits may not import agent/; see docs/architecture.md).

A product is any mapping with ``sku`` and ``name``, and optionally ``variant``, ``price`` (integer
minor units, printed with ``currency`` by :func:`kits.retail.money.format_price`, or text already
formatted) and ``barcode`` (the value to encode when it is not the SKU);
:func:`product_fields` makes one from a catalog ``Product``. Everything that cannot print right is refused with :class:`LabelError` before a
byte is sent: an EAN-13 with a wrong check digit, a Code128 value with characters it cannot carry,
text or a symbol that does not fit the label.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kits.retail.money import MoneyError, format_price
from kits.retail.sku import SkuError, barcode_kind, is_ean13

if TYPE_CHECKING:
    from kits.retail.catalog import Product

MM_PER_INCH = 25.4

# TSPL's built-in bitmap fonts: (width, height) of one character in dots at 203 dpi.
TSPL_FONTS: dict[str, tuple[int, int]] = {"1": (8, 12), "2": (12, 20), "3": (16, 24), "4": (24, 32), "5": (32, 48)}
Font = Literal["1", "2", "3", "4", "5"]
FieldName = Literal["name", "variant", "price", "sku"]
Symbology = Literal["auto", "ean13", "code128", "qr"]

# QR version 1..10 byte capacities at error correction M (ISO/IEC 18004 table 7): enough for SKUs
# and short URLs; the symbol is 17 + 4 * version modules wide.
_QR_M_BYTES = (14, 26, 42, 62, 84, 106, 122, 152, 180, 213)
_EAN13_MODULES = 95
_QUIET_MODULES = 10  # Code128 and EAN-13 (9 on the left, 7 on the right: 10 covers both)


class LabelError(ValueError):
    """A template or a value that cannot print correctly; the message says what and why."""


class TextField(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    field: FieldName
    x_mm: float = Field(ge=0)
    y_mm: float = Field(ge=0)
    font: Font = "3"
    scale: int = Field(default=1, ge=1, le=4)  # TSPL x/y multiplication; ZPL scales its font alike


class BarcodePlacement(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    symbology: Symbology = "auto"  # auto: EAN-13 for a numeric SKU, Code128 otherwise
    x_mm: float = Field(ge=0)
    y_mm: float = Field(ge=0)
    height_mm: float = Field(default=10, gt=0)  # bar height (1D); QR ignores it
    module: int = Field(default=2, ge=1, le=10)  # narrow bar / QR cell, in dots
    human_readable: bool = True


class LabelTemplate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    width_mm: float = Field(gt=0, le=120)
    height_mm: float = Field(gt=0, le=300)
    dpi: int = Field(default=203, ge=100, le=600)
    gap_mm: float = Field(default=2, ge=0)  # 0: continuous media
    fields: tuple[TextField, ...] = ()
    barcode: BarcodePlacement | None = None

    @model_validator(mode="after")
    def _inside(self) -> LabelTemplate:
        for f in self.fields:
            if f.x_mm >= self.width_mm or f.y_mm >= self.height_mm:
                raise ValueError(f"field {f.field} at ({f.x_mm}, {f.y_mm}) mm is off a "
                                 f"{self.width_mm:g} x {self.height_mm:g} mm label")
        b = self.barcode
        if b is not None and (b.x_mm >= self.width_mm or b.y_mm >= self.height_mm):
            raise ValueError(f"barcode at ({b.x_mm}, {b.y_mm}) mm is off a "
                             f"{self.width_mm:g} x {self.height_mm:g} mm label")
        return self

    def dots(self, mm: float) -> int:
        return round(mm * self.dpi / MM_PER_INCH)

    @property
    def width_dots(self) -> int:
        return self.dots(self.width_mm)

    @property
    def height_dots(self) -> int:
        return self.dots(self.height_mm)


def _f(field: FieldName, x: float, y: float, font: Font = "3", scale: int = 1) -> TextField:
    return TextField(field=field, x_mm=x, y_mm=y, font=font, scale=scale)


# Built-ins. Widths in dots at 203 dpi: 40 mm = 320, 50 mm = 399, 62 mm = 496 (a Brother QL's
# 62 mm tape is 696 px because that printer is 300 dpi).
TEMPLATES: dict[str, LabelTemplate] = {
    t.name: t
    for t in (
        LabelTemplate(
            name="shelf-40x30", width_mm=40, height_mm=30,
            fields=(_f("name", 2, 1.5, "3"), _f("variant", 2, 5, "2"), _f("price", 22, 5, "2")),
            barcode=BarcodePlacement(x_mm=2, y_mm=9, height_mm=12),
        ),
        LabelTemplate(
            name="price-50x25", width_mm=50, height_mm=25,
            fields=(_f("name", 2, 1.5, "3"), _f("price", 2, 5.5, "4")),
            barcode=BarcodePlacement(x_mm=3, y_mm=11, height_mm=8),
        ),
        LabelTemplate(
            name="tag-62", width_mm=62, height_mm=40, gap_mm=0,
            fields=(_f("name", 2, 1.5, "4"), _f("variant", 2, 6, "3"), _f("price", 2, 10, "4"),
                    _f("sku", 28, 12, "2")),
            barcode=BarcodePlacement(symbology="qr", x_mm=36, y_mm=16, module=5),
        ),
    )
}


def template(name: str) -> LabelTemplate:
    """A built-in template by name; LabelError listing the names when there is none."""
    try:
        return TEMPLATES[name]
    except KeyError:
        raise LabelError(f"no label template {name!r}; built-in: {', '.join(sorted(TEMPLATES))}") from None


# --- what goes on the label ---------------------------------------------------------------------


def product_fields(product: Product) -> dict[str, object]:
    """What a label prints of a catalog product: its current price, variants as one line."""
    return {"sku": product.sku, "name": product.name, "variant": product.variant_text(),
            "price": product.price, "currency": product.currency}


def _text(product: Mapping[str, object], field: FieldName) -> str:
    value = product.get(field)
    if value is None:
        return ""
    if field == "price" and isinstance(value, int) and not isinstance(value, bool):
        currency = product.get("currency", "EUR")
        try:
            return format_price(value, currency)  # type: ignore[arg-type]
        except MoneyError as exc:
            raise LabelError(f"product price: {exc}") from exc
    if not isinstance(value, str):
        raise LabelError(f"product {field} must be text, got {value!r}")
    if any(ord(c) < 0x20 for c in value):
        raise LabelError(f"product {field} {value!r} has control characters")
    return value


def _symbology(t: LabelTemplate, value: str) -> str:
    sym = t.barcode.symbology if t.barcode else "auto"
    if sym != "auto":
        return sym
    try:
        return barcode_kind(value)
    except SkuError as exc:
        raise LabelError(f"cannot choose a barcode for {value!r}: {exc}") from exc


def code128_modules(value: str) -> int:
    """Width in modules of ``value`` as Code128 set B: start, data, check (11 each) and stop (13)."""
    return 11 * (len(value) + 2) + 13


def qr_modules(value: str) -> int:
    n = len(value.encode("utf-8"))
    for version, capacity in enumerate(_QR_M_BYTES, start=1):
        if n <= capacity:
            return 17 + 4 * version
    raise LabelError(f"QR data is {n} bytes; labels carry at most {_QR_M_BYTES[-1]} (version 10, ECC M)")


def check_barcode(symbology: str, value: str) -> None:
    """Refuse a value the symbology cannot carry, with the reason."""
    if not value:
        raise LabelError("barcode value is empty")
    if symbology == "ean13":
        if not is_ean13(value):
            raise LabelError(f"EAN-13 {value!r} is not 13 digits ending in the right check digit")
    elif symbology == "code128":
        bad = sorted({c for c in value if not 0x20 <= ord(c) <= 0x7E})
        if bad:
            raise LabelError(f"Code128 (set B) cannot carry {''.join(bad)!r} in {value!r}: printable ASCII only")
        if '"' in value or "\\" in value:
            # TSPL's string quoting and ZPL's field data have no portable escape for these.
            raise LabelError(f"barcode value {value!r}: quotes and backslashes are not allowed")
    elif symbology == "qr":
        qr_modules(value)
    else:
        raise LabelError(f"unknown barcode type {symbology!r}")


class PlacedText(BaseModel):
    field: FieldName
    text: str
    x: int
    y: int
    font: Font
    scale: int


class PlacedBarcode(BaseModel):
    symbology: Literal["ean13", "code128", "qr"]
    value: str
    x: int
    y: int
    height: int
    module: int
    human_readable: bool
    width: int  # dots, bars only (no quiet zone)


class Layout(BaseModel):
    """A template filled for one product, in dots, checked to fit: what every renderer draws."""

    template: LabelTemplate
    texts: list[PlacedText]
    barcode: PlacedBarcode | None


def layout(t: LabelTemplate, product: Mapping[str, object]) -> Layout:
    """Place ``product`` on ``t``; LabelError if a value is bad or anything spills off the label."""
    if not isinstance(product, Mapping):
        raise LabelError(f"product must be a mapping, got {type(product).__name__}")
    sku = _text(product, "sku")
    if not sku:
        raise LabelError("product has no sku")
    if not _text(product, "name"):
        raise LabelError(f"product {sku} has no name")
    texts = []
    for f in t.fields:
        text = _text(product, f.field)
        if not text:
            continue
        if '"' in text or "\\" in text or "^" in text or "~" in text:
            raise LabelError(f"{f.field} {text!r}: the characters \" \\ ^ ~ cannot be printed on labels")
        cw, ch = TSPL_FONTS[f.font]
        x, y = t.dots(f.x_mm), t.dots(f.y_mm)
        room = (t.width_dots - x) // (cw * f.scale)
        if len(text) > room:
            raise LabelError(f"{f.field} {text!r} is {len(text)} characters; {room} fit at font {f.font} "
                             f"x{f.scale} from {f.x_mm:g} mm on the {t.width_mm:g} mm label {t.name!r}")
        if y + ch * f.scale > t.height_dots:
            raise LabelError(f"{f.field} at {f.y_mm:g} mm runs off the bottom of the {t.height_mm:g} mm label {t.name!r}")
        texts.append(PlacedText(field=f.field, text=text, x=x, y=y, font=f.font, scale=f.scale))
    placed = None
    if t.barcode is not None:
        b = t.barcode
        value = _text(product, "barcode") or sku  # type: ignore[arg-type]
        sym = _symbology(t, value)
        check_barcode(sym, value)
        x, y = t.dots(b.x_mm), t.dots(b.y_mm)
        if sym == "qr":
            width = height = qr_modules(value) * b.module
        else:
            width = (_EAN13_MODULES if sym == "ean13" else code128_modules(value)) * b.module
            height = t.dots(b.height_mm)
        text_h = 24 if b.human_readable and sym != "qr" else 0
        quiet = 0 if sym == "qr" else _QUIET_MODULES * b.module
        if x + width + quiet > t.width_dots:
            raise LabelError(f"{sym} {value!r} is {width} dots wide at module {b.module}; from {b.x_mm:g} mm "
                             f"only {t.width_dots - x - quiet} fit on the {t.width_mm:g} mm label {t.name!r}")
        if y + height + text_h > t.height_dots:
            raise LabelError(f"{sym} {value!r} is {height + text_h} dots tall; from {b.y_mm:g} mm only "
                             f"{t.height_dots - y} fit on the {t.height_mm:g} mm label {t.name!r}")
        placed = PlacedBarcode(symbology=sym, value=value, x=x, y=y, height=height, module=b.module,  # type: ignore[arg-type]
                               human_readable=b.human_readable, width=width)
    return Layout(template=t, texts=texts, barcode=placed)


# --- renderers ----------------------------------------------------------------------------------


def _copies(copies: int) -> int:
    if isinstance(copies, bool) or not isinstance(copies, int) or not 1 <= copies <= 999:
        raise LabelError(f"copies must be 1..999, got {copies!r}")
    return copies


def render_tspl(t: LabelTemplate, product: Mapping[str, object], copies: int = 1) -> bytes:
    """TSPL commands for one label design printed ``copies`` times (CRLF-terminated lines)."""
    lay = layout(t, product)
    copies = _copies(copies)
    lines = [
        f"SIZE {t.width_mm:g} mm,{t.height_mm:g} mm",
        f"GAP {t.gap_mm:g} mm,0 mm",
        "DIRECTION 1",
        "CLS",
    ]
    for p in lay.texts:
        lines.append(f'TEXT {p.x},{p.y},"{p.font}",0,{p.scale},{p.scale},"{p.text}"')
    b = lay.barcode
    if b is not None:
        if b.symbology == "qr":
            lines.append(f'QRCODE {b.x},{b.y},M,{b.module},A,0,"{b.value}"')
        else:
            kind = "EAN13" if b.symbology == "ean13" else "128"
            # EAN13 takes the 12 data digits; the printer adds the check digit we verified.
            value = b.value[:12] if b.symbology == "ean13" else b.value
            lines.append(f'BARCODE {b.x},{b.y},"{kind}",{b.height},{int(b.human_readable)},0,'
                         f'{b.module},{b.module},"{value}"')
    lines.append(f"PRINT 1,{copies}")
    text = "\r\n".join(lines) + "\r\n"
    if not text.isascii():
        # "Café": TSPL2 printers take UTF-8 once told; ASCII-only labels leave the code page alone,
        # so the oldest clones (no CODEPAGE UTF-8) still print every label that needs nothing more.
        text = "CODEPAGE UTF-8\r\n" + text
    return text.encode("utf-8")


def render_zpl(t: LabelTemplate, product: Mapping[str, object], copies: int = 1) -> bytes:
    """ZPL II for Zebra printers: ^XA, fields and one ^BE / ^BC / ^BQ symbol, ^PQ copies, ^XZ."""
    lay = layout(t, product)
    copies = _copies(copies)
    out = ["^XA", "^CI28", f"^PW{t.width_dots}", f"^LL{t.height_dots}"]
    for p in lay.texts:
        cw, ch = TSPL_FONTS[p.font]
        out.append(f"^FO{p.x},{p.y}^A0N,{ch * p.scale},{cw * p.scale}^FD{p.text}^FS")
    b = lay.barcode
    if b is not None:
        hr = "Y" if b.human_readable else "N"
        if b.symbology == "qr":
            out.append(f"^FO{b.x},{b.y}^BQN,2,{b.module}^FDMA,{b.value}^FS")
        elif b.symbology == "ean13":
            out.append(f"^FO{b.x},{b.y}^BY{b.module}^BEN,{b.height},{hr},N^FD{b.value[:12]}^FS")
        else:
            out.append(f"^FO{b.x},{b.y}^BY{b.module}^BCN,{b.height},{hr},N,N^FD{b.value}^FS")
    out += [f"^PQ{copies}", "^XZ"]
    return ("\n".join(out) + "\n").encode("utf-8")


ESCPOS_CHAR_DOTS = 12  # font A on an Epson-class printer


def escpos_job(t: LabelTemplate, product: Mapping[str, object]) -> dict:
    """The label as a job description for ``Receipt.from_dict`` (agent/drivers/receipt.py).

    A receipt printer in label mode prints top to bottom, so fields go in template order, the
    symbol after them, then a cut. Text must fit the label's width in font A. The ESC/POS job
    carries no EAN-13 block yet: a numeric SKU prints as Code128 of the same 13 digits (a
    scanner reads the same number).
    """
    lay = layout(t, product)
    blocks: list[dict] = []
    for p in lay.texts:
        scale = 2 if p.field == "price" else 1
        room = t.width_dots // (ESCPOS_CHAR_DOTS * scale)
        if len(p.text) > room:
            raise LabelError(f"{p.field} {p.text!r} is {len(p.text)} characters; {room} fit in font A "
                             f"on the {t.width_mm:g} mm label {t.name!r}")
        blocks.append({"kind": "text", "text": p.text, "bold": p.field == "name", "width": scale,
                       "height": scale, "align": "left"})
    b = lay.barcode
    if b is not None:
        if b.symbology == "qr":
            blocks.append({"kind": "qr", "data": b.value, "module": min(b.module, 16), "ecc": "M", "align": "left"})
        else:
            blocks.append({"kind": "barcode", "data": b.value, "height": min(b.height, 255),
                           "module": max(2, min(b.module, 6)), "align": "left"})
    blocks.append({"kind": "cut", "feed": 3, "partial": True})
    return {"blocks": blocks}
