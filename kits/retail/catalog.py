"""The catalog: products a kit carries to an event, their versioned prices, and its CSV form.

A product is one sellable variant (one SKU): "Tee, black, M" is one product, "Tee, black, L"
another, because each has its own label, stock and sales. ``variants`` names what makes it that
variant (``{"colour": "black", "size": "M"}``). The same SKU may be carried by several kits or to
several events (one row each, each with its stock); it must then mean the same product.

Prices are versioned (:class:`PriceVersion`): a change is a new version with the instant it
applies from, never an edit, so an order records ``(sku, price_version)`` and keeps the price it
was sold at. :func:`price_at` answers which version applied at a given instant.

The CSV format and the money rules are described in docs/retail.md. Parsing is all-or-nothing:
:func:`parse_catalog_csv` returns products only when every line is good, and otherwise every
problem, each with its line number, column and reason.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kits.contract import EVENT_ID_RE, ID_PATTERN
from kits.retail import money, sku as skus

NAME_MAX = 60  # fits two lines of a 40 mm label and one line of a 58 mm receipt
VARIANT_MAX = 24
MAX_STOCK = 99_999
DEFAULT_CURRENCY = "EUR"

# Columns, in the order export writes them. ``sku_kind`` and ``code`` only steer SKU generation.
REQUIRED = ("sku", "name", "price", "tax_rate", "stock", "kit", "event")
OPTIONAL = ("currency", "size", "colour", "sku_kind", "code")
VARIANT_PREFIX = "variant_"  # further variant columns: variant_material, variant_edition, ...
KNOWN_VARIANTS = ("size", "colour")
_ALIASES = {"color": "colour", "tax": "tax_rate", "vat": "tax_rate", "qty": "stock", "quantity": "stock",
            "title": "name", "product": "name"}
_VARIANT_COL_RE = re.compile(r"variant_[a-z][a-z0-9_]{0,23}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")

Sku = Annotated[str, Field(min_length=1, max_length=13)]
KitId = Annotated[str, Field(pattern=ID_PATTERN)]
EventId = Annotated[str, Field(pattern=f"^{EVENT_ID_RE}$")]


class PriceVersion(BaseModel):
    """One price of a product from ``from_ms`` (Unix ms) until the next version's ``from_ms``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = Field(ge=1)
    price: int = Field(ge=0, le=money.MAX_PRICE_MINOR)  # minor units
    tax_bp: int = Field(ge=0, le=money.MAX_TAX_BP)
    from_ms: int = Field(ge=0)


class Product(BaseModel):
    """One SKU a kit carries to an event. ``price``/``tax_bp`` are the current version's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sku: Sku
    name: str = Field(min_length=1, max_length=NAME_MAX)
    currency: str = DEFAULT_CURRENCY
    variants: dict[str, str] = Field(default_factory=dict)
    stock: int = Field(ge=0, le=MAX_STOCK)  # carried at the start; sales may take it below zero
    kit: KitId
    event: EventId
    prices: tuple[PriceVersion, ...] = Field(min_length=1)

    @property
    def price(self) -> int:
        return self.prices[-1].price

    @property
    def tax_bp(self) -> int:
        return self.prices[-1].tax_bp

    @property
    def price_version(self) -> int:
        return self.prices[-1].version

    @model_validator(mode="after")
    def _consistent(self) -> Product:
        problem = skus.sku_problem(self.sku)
        if problem:
            raise ValueError(problem)
        money.currency_digits(self.currency)
        for i, v in enumerate(self.prices):
            if v.version != i + 1:
                raise ValueError(f"price versions must be 1, 2, 3, ... in order; found {v.version} at {i + 1}")
            if i and v.from_ms < self.prices[i - 1].from_ms:
                raise ValueError(f"price version {v.version} starts before version {v.version - 1}")
        for k, val in self.variants.items():
            if k not in KNOWN_VARIANTS and not re.fullmatch(r"[a-z][a-z0-9_]{0,23}", k):
                raise ValueError(f"variant name {k!r}: lowercase letters, digits and '_'")
            if not val or len(val) > VARIANT_MAX or _CONTROL_RE.search(val):
                raise ValueError(f"variant {k} value {val!r}: 1-{VARIANT_MAX} printable characters")
        return self

    def variant_text(self) -> str:
        """"black / M" for labels and receipts (colour before size, then the rest by name)."""
        order = [k for k in ("colour", "size") if k in self.variants] + sorted(
            k for k in self.variants if k not in KNOWN_VARIANTS)
        return " / ".join(self.variants[k] for k in order)


def reprice(product: Product, price: int, tax_bp: int, from_ms: int) -> Product:
    """A new price version from ``from_ms``; the old versions stay, so past orders keep theirs."""
    last = product.prices[-1]
    if from_ms < last.from_ms:
        raise ValueError(f"new price must start at or after version {last.version}'s start ({last.from_ms})")
    new = PriceVersion(version=last.version + 1, price=price, tax_bp=tax_bp, from_ms=from_ms)
    return product.model_copy(update={"prices": (*product.prices, new)})


def price_at(product: Product, at_ms: int) -> PriceVersion:
    """The version in force at ``at_ms``: the latest starting at or before it (the first if earlier)."""
    found = product.prices[0]
    for v in product.prices:
        if v.from_ms <= at_ms:
            found = v
    return found


def price_version(product: Product, version: int) -> PriceVersion:
    """The price an order was sold at, by the version it recorded."""
    if not 1 <= version <= len(product.prices):
        raise KeyError(f"{product.sku} has no price version {version} (1..{len(product.prices)})")
    return product.prices[version - 1]


@dataclass(frozen=True)
class LineError:
    """One problem in a catalog file: where (line, column) and why."""

    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}, {self.field}: {self.reason}" if self.field else f"line {self.line}: {self.reason}"


def generated_rcn(name: str, variants: dict[str, str]) -> str:
    """An RCN-13 for a product without a SKU, from what the product *is* (name and variants,
    case- and space-insensitive), so re-importing the same sheet, in any row order or for another
    kit or event, gives the same number and the printed labels stay valid. A clash between two
    products is caught as a duplicate SKU; give one of them a SKU by hand."""
    key = "\x1f".join([_norm(name)] + [f"{k}={_norm(v)}" for k, v in sorted(variants.items())])
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return skus.rcn13(h % skus.RCN_MAX_ITEM + 1)


def generated_alnum(code: str, name: str, variants: dict[str, str]) -> str:
    """A readable SKU: the ``code`` column (or the name's first word, 3 characters) then each
    variant's first 3 letters/digits, colour before size: ``Tee`` black M -> ``TEE-BLA-M``.
    When that is longer than a label takes, the variant parts shrink to 2, then 1 character
    (``TEE-BL-XX``); if even that does not fit, the message asks for a sku or a shorter code."""
    head = _alnum(code) if code.strip() else _alnum(name.split()[0] if name.split() else "")[:3]
    order = [k for k in ("colour", "size") if k in variants] + sorted(k for k in variants if k not in KNOWN_VARIANTS)
    full = [_alnum(variants[k]) for k in order]
    if not head or not all(full):
        raise skus.SkuError("cannot make an alphanumeric SKU: a part has no letters or digits; give sku or code")
    for width in (3, 2, 1):
        parts = [head] + [v[:width] for v in full]
        if len("-".join(parts)) <= skus.ALNUM_MAX_LEN:
            break
    return skus.alnum_sku(*parts)


def _norm(s: str) -> str:
    return " ".join(s.split()).casefold()


def _alnum(s: str) -> str:
    return "".join(c for c in s.upper() if c.isascii() and c.isalnum())


def _header(raw: list[str]) -> tuple[list[str], list[LineError]]:
    errors, cols = [], []
    for i, name in enumerate(raw):
        col = name.strip().lower()
        if i == 0:
            col = col.lstrip("\ufeff")  # a spreadsheet's byte-order mark
        cols.append(col)
        if not col:
            errors.append(LineError(1, f"column {i + 1}", "empty column name"))
        elif col in _ALIASES:
            errors.append(LineError(1, col, f"unknown column (did you mean {_ALIASES[col]!r}?)"))
        elif col not in REQUIRED and col not in OPTIONAL and not _VARIANT_COL_RE.fullmatch(col):
            errors.append(LineError(1, col, "unknown column; known: " + ", ".join(REQUIRED + OPTIONAL)
                                    + f", {VARIANT_PREFIX}<name>"))
    seen = set()
    for col in cols:
        if col and col in seen:
            errors.append(LineError(1, col, "column appears twice"))
        seen.add(col)
    missing = [c for c in REQUIRED if c not in cols]
    if missing:
        errors.append(LineError(1, "", "missing required column" + ("s " if len(missing) > 1 else " ")
                                + ", ".join(missing) + "; required: " + ", ".join(REQUIRED)))
    return cols, errors


def _row(line: int, row: dict[str, str], from_ms: int) -> tuple[Product | None, list[LineError]]:
    errs: list[LineError] = []

    def bad(field: str, reason: str) -> None:
        errs.append(LineError(line, field, reason))

    for col, val in row.items():
        if _CONTROL_RE.search(val):
            bad(col, "contains a control character (a tab or line break inside a cell?)")
    name = " ".join(row["name"].split())
    if not name:
        bad("name", "empty")
    elif len(name) > NAME_MAX:
        bad("name", f"{len(name)} characters; at most {NAME_MAX}")
    currency = row.get("currency", "").strip().upper() or DEFAULT_CURRENCY
    try:
        money.currency_digits(currency)
    except money.MoneyError as e:
        bad("currency", str(e))
        currency = DEFAULT_CURRENCY
    price = tax = stock = None
    try:
        price = money.parse_price(row["price"], currency)
    except money.MoneyError as e:
        bad("price", str(e))
    try:
        tax = money.parse_tax_rate(row["tax_rate"])
    except money.MoneyError as e:
        bad("tax_rate", str(e))
    s = row["stock"].strip()
    if not s:
        bad("stock", "empty (write 0 if the kit carries none)")
    elif not (s.isascii() and s.isdigit()):
        bad("stock", f"{s!r}: a whole number 0..{MAX_STOCK}" + (" (negative stock only arises from sales)"
                                                                 if s.startswith("-") else ""))
    elif int(s) > MAX_STOCK:
        bad("stock", f"{s} is above {MAX_STOCK}")
    else:
        stock = int(s)
    kit, event = row["kit"].strip(), row["event"].strip().upper()
    if not re.fullmatch(ID_PATTERN, kit):
        bad("kit", f"{kit!r}: a kit id (lowercase letters, digits, '-' and '_', as in the kit manifest)")
    if not re.fullmatch(EVENT_ID_RE, event):
        bad("event", f"{event!r}: an event id (A-Z, 0-9 and '-', at most 16, e.g. FEST25)")
    variants = {}
    for col in ("colour", "size", *sorted(c for c in row if c.startswith(VARIANT_PREFIX))):
        val = " ".join(row.get(col, "").split())
        if val:
            if len(val) > VARIANT_MAX:
                bad(col, f"{len(val)} characters; at most {VARIANT_MAX}")
            variants[col.removeprefix(VARIANT_PREFIX)] = val
    kind = row.get("sku_kind", "").strip().lower()
    if kind not in ("", "rcn", "alnum"):
        bad("sku_kind", f"{kind!r}: rcn (numeric RCN-13, the default) or alnum (Code128 like TEE-BLK-M)")
    code = row.get("code", "")
    sku = row["sku"].strip().upper()
    if sku:
        if kind:
            bad("sku_kind", "given with a sku: sku_kind and code only apply when sku is left empty")
        problem = skus.sku_problem(sku)
        if problem:
            bad("sku", problem)
    elif not errs:
        try:
            sku = generated_alnum(code, name, variants) if kind == "alnum" else generated_rcn(name, variants)
        except skus.SkuError as e:
            bad("sku", f"generated {kind or 'rcn'} SKU: {e}")
    if errs:
        return None, errs
    p = Product(sku=sku, name=name, currency=currency, variants=variants, stock=stock, kit=kit, event=event,
                prices=(PriceVersion(version=1, price=price, tax_bp=tax, from_ms=from_ms),))
    return p, []


def parse_catalog_csv(text: str, from_ms: int = 0) -> tuple[list[Product], list[LineError]]:
    """Products from a catalog CSV, all or nothing: ``(products, [])`` when every line is good,
    else ``([], errors)`` with every problem found. Prices start as version 1 from ``from_ms``.

    Refused: unknown or repeated columns, missing required ones, a line with more cells than the
    header, any bad cell, the same SKU twice for one kit and event, and one SKU naming two
    different products (name or variants) across kits or events."""
    if not isinstance(text, str):
        raise TypeError("catalog text must be str (decode the file as UTF-8 first)")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    errors: list[LineError] = []
    products: list[Product] = []
    try:
        raw = next(reader, None)
        if raw is None:
            return [], [LineError(1, "", "empty file: a header line is required: " + ",".join(REQUIRED))]
        cols, errors = _header(raw)
        if errors:
            return [], errors
        first: dict[tuple[str, str, str], int] = {}
        meaning: dict[str, tuple[int, str, dict[str, str]]] = {}
        line = reader.line_num + 1
        for cells in reader:
            start, line = line, reader.line_num + 1
            if not any(c.strip() for c in cells):
                continue  # blank lines between groups of products are fine
            if len(cells) > len(cols):
                errors.append(LineError(start, "", f"{len(cells)} cells but the header has {len(cols)} columns"))
                continue
            row = dict(zip(cols, cells + [""] * (len(cols) - len(cells))))
            p, errs = _row(start, row, from_ms)
            errors.extend(errs)
            if p is None:
                continue
            key = (p.kit, p.event, p.sku)
            if key in first:
                errors.append(LineError(start, "sku", f"{p.sku} already on line {first[key]} for kit {p.kit}, "
                                        f"event {p.event}" + (" (generated: give one a sku)" if not row["sku"].strip()
                                                              else "")))
                continue
            first[key] = start
            prev = meaning.get(p.sku)
            if prev and (prev[1], prev[2]) != (_norm(p.name), {k: _norm(v) for k, v in p.variants.items()}):
                errors.append(LineError(start, "sku", f"{p.sku} is a different product on line {prev[0]}"))
                continue
            meaning.setdefault(p.sku, (start, _norm(p.name), {k: _norm(v) for k, v in p.variants.items()}))
            products.append(p)
    except csv.Error as e:
        errors.append(LineError(reader.line_num, "", f"not valid CSV: {e}"))
    if not errors and not products:
        errors.append(LineError(2, "", "no products: the file has a header only"))
    return ([], errors) if errors else (products, [])


def export_catalog_csv(products: list[Product]) -> str:
    """The current state as CSV (current prices; the history lives in the JSON and the fleet),
    read back by :func:`parse_catalog_csv` into the same products."""
    extra = sorted({k for p in products for k in p.variants if k not in KNOWN_VARIANTS})
    cols = [*REQUIRED, "currency", "colour", "size", *(VARIANT_PREFIX + k for k in extra)]
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(cols)
    for p in products:
        w.writerow([p.sku, p.name, money.format_amount(p.price, p.currency), money.format_tax_rate(p.tax_bp),
                    p.stock, p.kit, p.event, p.currency, p.variants.get("colour", ""), p.variants.get("size", ""),
                    *(p.variants.get(k, "") for k in extra)])
    return out.getvalue()


def catalog_json(products: list[Product]) -> dict:
    """The normalised catalog, price history included, as one JSON-able object."""
    return {"format": "popkit-catalog/1", "products": [p.model_dump(mode="json") for p in products]}


def catalog_from_json(doc: dict) -> list[Product]:
    """Inverse of :func:`catalog_json`; a wrong format or product raises ValueError."""
    if not isinstance(doc, dict) or doc.get("format") != "popkit-catalog/1":
        raise ValueError("not a PopKit catalog (format popkit-catalog/1)")
    return [Product.model_validate(p) for p in doc.get("products", [])]
