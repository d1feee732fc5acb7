"""What the kit's printer prints for a sale: the customer's receipt, or the slip of a refund or void.

Pure: a contract ``Order`` / ``Refund`` (as its JSON dict) in, an ``agent.drivers.receipt.Receipt``
out. Laid out in :data:`WIDTH` columns so it fits a 58 mm roll as well as an 80 mm one. The order id
is printed short for the eye and whole as a QR code, so a refund at the till starts with a scan.
"""

from __future__ import annotations

import time

from agent.drivers.receipt import Receipt
from kits.retail.money import format_amount, format_tax_rate

WIDTH = 32  # characters of font A on a 58 mm roll (an 80 mm roll takes 48)
PAYMENT_TEXT = {"cash": "cash", "card_terminal": "card (terminal)", "other": "other"}


def _pair(left: str, right: str) -> str:
    """``left`` and ``right`` on one line, ``right`` flush right; a long ``left`` is cut, never wrapped."""
    room = WIDTH - len(right) - 1
    return f"{left[:room]:<{room}} {right}"


def _when(sale: dict) -> str:
    if sale.get("clock") == "unset":
        return "time not set"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(sale["ts"] / 1000))


def short_id(sale_id: str) -> str:
    """The first block of the UUID: what the crew reads aloud and types to find an order."""
    return sale_id.split("-", 1)[0]


def _header(r: Receipt, kit_name: str, sale: dict) -> None:
    r.text(kit_name[:WIDTH // 2], bold=True, width=2, height=2, align="center")
    r.text(sale["event"], align="center")
    r.text("-" * WIDTH)


def _footer(r: Receipt, sale: dict, label: str) -> None:
    r.text("-" * WIDTH)
    r.text(_pair(f"{label} {short_id(sale['id'])}", f"#{sale['n']}"))
    r.text(_pair(f"till {sale['till']}"[:WIDTH - 21], _when(sale)))
    r.qr(sale["id"], module=4)
    r.feed(2)
    r.cut()


def _taxes(r: Receipt, lines: list[dict], rates: dict[str, int], currency: str, sign: str = "") -> None:
    by_rate: dict[int, int] = {}
    for x in lines:
        bp = rates.get(x["sku"], -1)
        by_rate[bp] = by_rate.get(bp, 0) + x["tax"]
    for bp, tax in sorted(by_rate.items()):
        label = f"incl. tax {format_tax_rate(bp)}%" if bp >= 0 else "incl. tax"
        r.text(_pair(label, sign + format_amount(tax, currency)))
    r.text(_pair("net", sign + format_amount(sum(x["net"] for x in lines), currency)))


def order_receipt(order: dict, kit_name: str, names: dict[str, str]) -> Receipt:
    """The customer's receipt. ``names``: SKU -> the text printed for it (name and variant)."""
    cur = order["currency"]
    r = Receipt()
    _header(r, kit_name, order)
    for x in order["lines"]:
        r.text(names.get(x["sku"], x["sku"])[:WIDTH])
        r.text(_pair(f"  {x['qty']} x {format_amount(x['unit'], cur)}", format_amount(x["gross"], cur)))
    r.text("-" * WIDTH)
    r.text(_pair("TOTAL", f"{cur} {format_amount(order['gross'], cur)}"), bold=True)
    _taxes(r, order["lines"], {x["sku"]: x["tax_bp"] for x in order["lines"]}, cur)
    r.text(_pair("paid", PAYMENT_TEXT.get(order["payment"], order["payment"])))
    _footer(r, order, "Order")
    return r


def refund_receipt(refund: dict, order: dict, kit_name: str, names: dict[str, str]) -> Receipt:
    """The slip of a refund or a void: what went back, against which order."""
    cur = refund["currency"]
    r = Receipt()
    _header(r, kit_name, refund)
    r.text("VOID" if refund["kind"] == "void" else "REFUND", bold=True, width=2, align="center")
    r.text(f"of order {short_id(refund['order'])} (#{order['n']})")
    for x in refund["lines"]:
        r.text(names.get(x["sku"], x["sku"])[:WIDTH])
        r.text(_pair(f"  {x['qty']} back", "-" + format_amount(x["gross"], cur)))
    r.text("-" * WIDTH)
    r.text(_pair("RETURNED", f"{cur} -{format_amount(refund['gross'], cur)}"), bold=True)
    _taxes(r, refund["lines"], {x["sku"]: x["tax_bp"] for x in order["lines"]}, cur, sign="-")
    if refund.get("reason"):
        r.text(f"reason: {refund['reason']}"[:WIDTH])
    _footer(r, refund, "Refund")
    return r
