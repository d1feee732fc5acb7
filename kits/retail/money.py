"""Money at the stall: integer minor units, basis-point tax rates, half-up rounding per line.

* **Amounts** are ``int`` minor units (cents): ``1250`` is 12.50. No floats anywhere, so the till,
  the receipt and the fleet add up to the same cent.
* **Prices** are written with ``.`` as the decimal point and at most two decimals (``12``,
  ``12.5``, ``12.50``); :func:`parse_price` refuses anything else with a message saying why.
* **Tax rates** are ``int`` basis points: ``2000`` is 20 %, ``750`` is 7.5 %. Written as a percent
  with at most two decimals (``20``, ``7.5``, ``5.55%``), read by :func:`parse_tax_rate`.
* **Rounding**: tax is computed once per order line on the line's whole amount (unit x quantity)
  and rounded half-up to the minor unit, as most tills do; an order's totals are the sums of its
  lines, so a receipt's lines always add up to its total.
"""

from __future__ import annotations

import re
from typing import NamedTuple

MAX_PRICE_MINOR = 99_999_999  # 999 999.99: beyond a stall; a bigger number is a typo
MAX_QTY = 9_999
BP_PER_PERCENT = 100
MAX_TAX_BP = 100 * BP_PER_PERCENT

# ISO 4217 currencies without minor units. Three-decimal currencies (KWD, BHD, ...) are not
# supported: prices here have at most two decimals.
_ZERO_DECIMAL = frozenset({"JPY", "KRW", "ISK", "CLP", "VND", "XOF", "XAF", "UGX", "PYG"})
_THREE_DECIMAL = frozenset({"BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"})

_PRICE_RE = re.compile(r"(0|[1-9][0-9]*)(?:\.([0-9]{1,2}))?")
_CURRENCY_RE = re.compile(r"[A-Z]{3}")


class MoneyError(ValueError):
    """A price, rate, quantity or currency that cannot be used; the message says why."""


def currency_digits(currency: str) -> int:
    """Minor-unit digits of an ISO 4217 code: 2 for most, 0 for JPY and the like."""
    if not isinstance(currency, str) or not _CURRENCY_RE.fullmatch(currency):
        raise MoneyError(f"currency must be a three-letter ISO 4217 code like EUR, got {currency!r}")
    if currency in _THREE_DECIMAL:
        raise MoneyError(f"currency {currency} has three decimals; PopKit prices have at most two")
    return 0 if currency in _ZERO_DECIMAL else 2


def _why_not_number(s: str) -> str:
    low = s.lower()
    if s.startswith("-"):
        return "negative prices are not allowed"
    if s.startswith("+"):
        return "write the price without a sign"
    if low in ("nan", "inf", "-inf", "+inf", "infinity"):
        return "not a number"
    if "," in s or "_" in s or " " in s or "'" in s:
        return "use '.' as the decimal point and no thousands separators (write 1234.50)"
    if "e" in low:
        return "no exponents: write the price in full"
    if re.fullmatch(r"[0-9]*\.[0-9]{3,}", s):
        return "more than two decimals"
    if s.startswith("."):
        return "write a digit before the decimal point (0.50)"
    if re.fullmatch(r"0[0-9]+(\.[0-9]*)?", s):
        return "no leading zeros"
    if s.endswith("."):
        return "no digits after the decimal point"
    return "not a price: digits with an optional '.' and up to two decimals"


def parse_price(text: str, currency: str = "EUR") -> int:
    """``"12.50"`` -> ``1250`` minor units. Refuses more decimals than the currency has,
    negatives, NaN, exponents, thousands separators and decimal commas, naming the problem."""
    if not isinstance(text, str):
        raise MoneyError(f"price must be text, got {text!r}")
    s = text.strip()
    if not s:
        raise MoneyError("price is empty")
    digits = currency_digits(currency)
    m = _PRICE_RE.fullmatch(s) if s.isascii() else None
    if not m:
        raise MoneyError(f"price {text!r}: {_why_not_number(s)}")
    whole, frac = m.group(1), m.group(2) or ""
    if len(frac) > digits:
        limit = f"more than {digits} decimals" if digits else "no decimals allowed"
        raise MoneyError(f"price {text!r}: {limit} for {currency}")
    minor = int(whole) * 10**digits + int(frac.ljust(digits, "0") or "0")
    if minor > MAX_PRICE_MINOR:
        raise MoneyError(f"price {text!r} is above the limit of {format_price(MAX_PRICE_MINOR, currency)}")
    return minor


def parse_tax_rate(text: str) -> int:
    """A percent (``"20"``, ``"7.5"``, ``"5.55%"``) -> basis points (2000, 750, 555), 0 to 100 %."""
    if not isinstance(text, str):
        raise MoneyError(f"tax rate must be text, got {text!r}")
    s = text.strip()
    if s.endswith("%"):
        s = s[:-1].rstrip()
    if not s:
        raise MoneyError("tax rate is empty (write 0 for untaxed)")
    m = _PRICE_RE.fullmatch(s) if s.isascii() else None
    if not m:
        raise MoneyError(f"tax rate {text!r}: {_why_not_number(s).replace('price', 'rate')}")
    whole, frac = m.group(1), m.group(2) or ""
    bp = int(whole) * BP_PER_PERCENT + int(frac.ljust(2, "0") or "0")
    if bp > MAX_TAX_BP:
        raise MoneyError(f"tax rate {text!r} is above 100 %")
    return bp


def format_tax_rate(bp: int) -> str:
    """Basis points back to the shortest percent text :func:`parse_tax_rate` reads: 750 -> "7.5"."""
    _check_bp(bp)
    whole, frac = divmod(bp, BP_PER_PERCENT)
    return str(whole) if not frac else f"{whole}.{frac:02d}".rstrip("0")


def format_price(minor: int, currency: str = "EUR") -> str:
    """``1250, "EUR"`` -> ``"12.50 EUR"``; the amount text alone is :func:`format_amount`."""
    return f"{format_amount(minor, currency)} {currency}"


def format_amount(minor: int, currency: str = "EUR") -> str:
    """``1250`` -> ``"12.50"``, ``-5`` -> ``"-0.05"``; what :func:`parse_price` reads back."""
    if isinstance(minor, bool) or not isinstance(minor, int):
        raise MoneyError(f"amount must be integer minor units, got {minor!r}")
    digits = currency_digits(currency)
    sign = "-" if minor < 0 else ""
    whole, frac = divmod(abs(minor), 10**digits)
    return f"{sign}{whole}" if digits == 0 else f"{sign}{whole}.{frac:0{digits}d}"


def round_half_up(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded to the nearest integer, halves away from zero."""
    if denominator <= 0:
        raise MoneyError("denominator must be positive")
    q = (2 * abs(numerator) + denominator) // (2 * denominator)
    return -q if numerator < 0 else q


class LineTotal(NamedTuple):
    """One order line's money: ``net + tax == gross``, all minor units."""

    net: int
    tax: int
    gross: int


def _check_bp(bp: int) -> None:
    if isinstance(bp, bool) or not isinstance(bp, int) or not 0 <= bp <= MAX_TAX_BP:
        raise MoneyError(f"tax rate must be basis points 0..{MAX_TAX_BP}, got {bp!r}")


def line_total(unit: int, qty: int, tax_bp: int, *, tax_included: bool = True) -> LineTotal:
    """The money of ``qty`` x ``unit`` at ``tax_bp``, tax rounded half-up once for the line.

    ``tax_included`` (the default, as stall prices are shown): the unit price is gross and the
    tax is the part of it, ``gross * r / (1 + r)``. Otherwise the unit price is net and the tax
    is added, ``net * r``. A refund is the same line negated, so it returns the same cents."""
    if isinstance(unit, bool) or not isinstance(unit, int) or not 0 <= unit <= MAX_PRICE_MINOR:
        raise MoneyError(f"unit price must be integer minor units 0..{MAX_PRICE_MINOR}, got {unit!r}")
    if isinstance(qty, bool) or not isinstance(qty, int) or not 1 <= qty <= MAX_QTY:
        raise MoneyError(f"quantity must be a whole number 1..{MAX_QTY}, got {qty!r}")
    _check_bp(tax_bp)
    amount = unit * qty
    if tax_included:
        tax = round_half_up(amount * tax_bp, MAX_TAX_BP + tax_bp)
        return LineTotal(amount - tax, tax, amount)
    tax = round_half_up(amount * tax_bp, MAX_TAX_BP)
    return LineTotal(amount, tax, amount + tax)


def order_total(lines: list[LineTotal]) -> LineTotal:
    """An order's totals: the sums of its lines (never re-rounded)."""
    return LineTotal(sum(x.net for x in lines), sum(x.tax for x in lines), sum(x.gross for x in lines))
