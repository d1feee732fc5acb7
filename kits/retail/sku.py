"""SKU numbering: RCN-13 numeric codes (EAN-13 symbols) and readable alphanumeric SKUs (Code128).

Two kinds of SKU, never confused with each other:

* **RCN-13** ``04` + 10-digit item number + EAN-13 check digit, e.g. ``0400000000015`` for item 1. GS1
  reserves prefixes 040-049 for restricted circulation *within a company*, valid in every
  country, so a kit can carry its labels across borders. Prefixes 20-29 are also "restricted
  circulation", but per *country*: many countries use them for variable-measure items with a
  weight or price embedded, and a till abroad may decode our item number as a price. So we never
  issue them.
* **Alphanumeric** uppercase ``A-Z0-9`` segments joined by ``-``, e.g. ``TEE-BLK-M``, printed as
  Code128. At least one letter, so an alphanumeric SKU can never be read as a numeric code, and
  at most :data:`ALNUM_MAX_LEN` characters (see :func:`code128_max_chars` for why).
"""

from __future__ import annotations

import re

RCN_PREFIX = "04"
RCN_MAX_ITEM = 10**10 - 1  # ten digits between the prefix and the check digit

# Code128 geometry (ISO/IEC 15417): each symbol character is 11 modules wide; a symbol is a start
# character, the data, a check character and a 13-module stop, with a quiet zone of at least 10
# modules on either side.
_C128_SYMBOL = 11
_C128_OVERHEAD = 11 + 11 + 13 + 2 * 10  # start + check + stop + both quiet zones

LABEL_WIDTH_MM = 40.0
LABEL_DPI = 203
# One module = 2 printer dots (0.25 mm at 203 dpi). A 1-dot bar (0.125 mm) bleeds on a cheap
# thermal head and sits below what a stall's scanner reads reliably; 2 dots is also TSPL's
# usual default narrow bar.
MODULE_DOTS = 2


def code128_max_chars(
    width_mm: float = LABEL_WIDTH_MM, dpi: int = LABEL_DPI, module_dots: int = MODULE_DOTS
) -> int:
    """How many Code128 set-B characters fit across a label of ``width_mm`` with quiet zones.

    40 mm at 203 dpi is 319 dots = 159 modules of 2 dots; 159 - 55 overhead leaves 104 modules,
    i.e. 9 characters of 11 modules. Longer SKUs need a wider label, not narrower bars.
    """
    dots = int(width_mm / 25.4 * dpi)
    modules = dots // module_dots
    return max(0, (modules - _C128_OVERHEAD) // _C128_SYMBOL)


ALNUM_MAX_LEN = code128_max_chars()  # 9 for the default 40 mm / 203 dpi label

_SEGMENT_RE = re.compile(r"[A-Z0-9]+")
_SKU_RE = re.compile(r"[A-Z0-9]+(?:-[A-Z0-9]+)*")


class SkuError(ValueError):
    """A SKU, a code or an item number that cannot be used; the message says why."""


def ean13_check(digits12: str) -> int:
    """The EAN-13 check digit of the first 12 digits (weights 1,3,1,3,... from the left)."""
    if not isinstance(digits12, str) or len(digits12) != 12 or not digits12.isascii() or not digits12.isdigit():
        raise SkuError(f"EAN-13 check digit needs exactly 12 ASCII digits, got {digits12!r}")
    total = sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(digits12))
    return (10 - total % 10) % 10


def is_ean13(code: str) -> bool:
    """True if ``code`` is 13 ASCII digits whose last is the right check digit."""
    if not isinstance(code, str) or len(code) != 13 or not code.isascii() or not code.isdigit():
        return False
    return ean13_check(code[:12]) == int(code[12])


def rcn13(n: int) -> str:
    """The RCN-13 code for item number ``n`` (1 .. 9 999 999 999): "04" + 10 digits + check."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise SkuError(f"RCN-13 item number must be an integer, got {n!r}")
    if not 1 <= n <= RCN_MAX_ITEM:
        raise SkuError(f"RCN-13 item number must be between 1 and {RCN_MAX_ITEM}, got {n}")
    body = f"{RCN_PREFIX}{n:010d}"
    return body + str(ean13_check(body))


def is_rcn13(code: str) -> bool:
    """True for a valid EAN-13 in our company-internal range (prefix 04)."""
    return is_ean13(code) and code.startswith(RCN_PREFIX)


def rcn13_item(code: str) -> int:
    """The item number inside an RCN-13 code (inverse of :func:`rcn13`)."""
    if not is_rcn13(code):
        raise SkuError(f"not an RCN-13 code (04 prefix, 13 digits, EAN-13 check digit): {code!r}")
    return int(code[2:12])


def alnum_sku(product: str, *variants: str) -> str:
    """A readable Code128 SKU from a product code and variant codes: ``alnum_sku("tee", "blk", "m")``
    is ``TEE-BLK-M``. Parts are upper-cased and stripped; anything else is refused, not mangled,
    so the same inputs always give the same SKU and a typo is seen at once."""
    parts = [product, *variants]
    segments = []
    for i, part in enumerate(parts):
        if not isinstance(part, str):
            raise SkuError(f"SKU part {i + 1} must be text, got {part!r}")
        seg = part.strip().upper()
        if not seg:
            raise SkuError(f"SKU part {i + 1} is empty")
        if not seg.isascii() or not _SEGMENT_RE.fullmatch(seg):
            raise SkuError(f"SKU part {i + 1} {part!r}: only letters A-Z and digits 0-9 are allowed")
        segments.append(seg)
    sku = "-".join(segments)
    problem = sku_problem(sku)
    if problem:
        raise SkuError(problem)
    return sku


def sku_problem(s: str) -> str | None:
    """Why ``s`` is not a usable SKU (either kind), or None if it is."""
    if not isinstance(s, str):
        return f"SKU must be text, got {s!r}"
    if not s:
        return "SKU is empty"
    if s.isascii() and s.isdigit():
        if len(s) == 13 and is_ean13(s):
            if 20 <= int(s[:2]) <= 29:
                return f"EAN-13 {s!r} has a country-specific prefix (20-29); use an RCN-13 (04...)"
            return None  # our RCN-13s and a maker's own EAN-13 barcodes
        return f"numeric SKU {s!r} must be a 13-digit EAN-13 with a correct check digit"
    if not s.isascii() or not _SKU_RE.fullmatch(s):
        return f"SKU {s!r}: uppercase A-Z and 0-9 segments joined by single '-' only"
    if len(s) > ALNUM_MAX_LEN:
        return (
            f"SKU {s!r} is {len(s)} characters; at most {ALNUM_MAX_LEN} fit as Code128 on a "
            f"{LABEL_WIDTH_MM:g} mm label at {LABEL_DPI} dpi"
        )
    if not any(c.isalpha() for c in s):
        # e.g. "12-34": all digits once the dashes go; refuse so it cannot pass for a number.
        return f"SKU {s!r} needs at least one letter"
    return None


def valid_sku(s: str) -> bool:
    """True for an EAN-13 code (not 20-29) or a conventional alphanumeric SKU."""
    return sku_problem(s) is None


def barcode_kind(sku: str) -> str:
    """Which symbology prints ``sku``: "ean13" for numeric codes, "code128" for alphanumeric."""
    problem = sku_problem(sku)
    if problem:
        raise SkuError(problem)
    return "ean13" if sku.isdigit() else "code128"
