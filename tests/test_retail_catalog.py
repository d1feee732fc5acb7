"""Issue 19's pure core: EAN-13/RCN-13 and alphanumeric SKUs, money, the catalog CSV, and
``popkit retail``. Everything here is pure code, so every case runs in-process."""

from __future__ import annotations

import json
import re
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kits.retail import catalog, money, sku
from kits.retail.catalog import LineError, PriceVersion, Product, parse_catalog_csv
from popkit.cli import main

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "kits" / "examples" / "catalog.csv"
HEADER = "sku,name,price,tax_rate,stock,kit,event"


def props(n: int):
    return settings(max_examples=n, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------- EAN-13 / RCN-13

# Wikipedia's EAN-13 examples, the ISBN-13 of ISBN-10 0-306-40615-2, a UPC-A 012345678905 as EAN-13.
@pytest.mark.parametrize("code", ["4006381333931", "5901234123457", "9780306406157", "0012345678905"])
def test_real_ean13_codes_check(code):
    assert sku.ean13_check(code[:12]) == int(code[12])
    assert sku.is_ean13(code)


@pytest.mark.parametrize("code", ["4006381333932", "400638133393", "40063813339310", "400638133393X",
                                  "４００６３８１３３３９３１", "", "4006381333931 "])
def test_not_ean13(code):
    assert not sku.is_ean13(code)


@pytest.mark.parametrize("bad", ["40063813339", "4006381333931", "40063813339a", 400638133393])
def test_check_digit_needs_twelve_digits(bad):
    with pytest.raises(sku.SkuError, match="12 ASCII digits"):
        sku.ean13_check(bad)


def test_rcn13_known_values():
    assert sku.rcn13(1) == "0400000000015"
    assert sku.rcn13(sku.RCN_MAX_ITEM) == "0499999999998"  # 0+9*5=45, 3*(4+9*5)=147: 192 -> 8
    assert sku.rcn13_item("0400000000015") == 1


@pytest.mark.parametrize("n", [0, -1, 10**10, True, 1.0, "5"])
def test_rcn13_refuses_out_of_range(n):
    with pytest.raises(sku.SkuError, match="RCN-13 item number"):
        sku.rcn13(n)


@props(300)
@given(st.integers(min_value=1, max_value=sku.RCN_MAX_ITEM), st.integers(0, 12), st.integers(1, 9))
def test_rcn13_is_prefix_04_valid_and_catches_any_one_digit_error(n, pos, delta):
    code = sku.rcn13(n)
    assert len(code) == 13 and code.startswith("04") and sku.is_ean13(code) and sku.is_rcn13(code)
    assert sku.rcn13_item(code) == n
    assert sku.barcode_kind(code) == "ean13"
    typo = code[:pos] + str((int(code[pos]) + delta) % 10) + code[pos + 1:]
    assert not sku.is_ean13(typo)


def test_country_prefixes_20_to_29_are_refused_as_skus():
    code = "20" + "0000000001"
    code += str(sku.ean13_check(code))
    assert sku.is_ean13(code)
    assert "country-specific" in sku.sku_problem(code)
    assert sku.valid_sku("4006381333931")  # a maker's own barcode is fine


# ---------------------------------------------------------------- alphanumeric SKUs

def test_alnum_sku_convention():
    assert sku.alnum_sku("TEE", "BLK", "M") == "TEE-BLK-M"
    assert sku.alnum_sku(" tee", "blk ", "m") == "TEE-BLK-M"
    assert sku.alnum_sku("POSTER") == "POSTER"
    assert sku.barcode_kind("TEE-BLK-M") == "code128"


def test_label_limit_is_nine_characters_on_40mm_at_203dpi():
    assert sku.ALNUM_MAX_LEN == sku.code128_max_chars(40, 203, 2) == 9
    assert sku.code128_max_chars(60, 203, 2) > 9  # a wider label takes more
    assert sku.code128_max_chars(40, 203, 1) > 9  # thinner bars would too (we refuse them; see sku.py)
    with pytest.raises(sku.SkuError, match=r"10 characters; at most 9 .* 40 mm label at 203 dpi"):
        sku.alnum_sku("TEE", "BLK", "XL")


@pytest.mark.parametrize(("parts", "why"), [
    (("TEE", ""), "part 2 is empty"),
    (("T-E",), "only letters A-Z and digits"),
    (("TÉE",), "only letters A-Z and digits"),
    (("12", "34"), "at least one letter"),
    (("TEE", 5), "must be text"),
])
def test_alnum_sku_refusals(parts, why):
    with pytest.raises(sku.SkuError, match=why):
        sku.alnum_sku(*parts)


@pytest.mark.parametrize(("s", "ok"), [("TEE-BLK-M", True), ("A", True), ("tee-blk", False), ("TEE--M", False),
                                      ("-TEE", False), ("TEE-", False), ("TEE M", False), ("", False),
                                      ("1234", False), ("0400000000016", False), ("ABCDEFGHIJ", False)])
def test_valid_sku(s, ok):
    assert sku.valid_sku(s) is ok
    if not ok:
        assert sku.sku_problem(s)


@props(200)
@given(st.lists(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcxyz", min_size=1, max_size=5),
                min_size=1, max_size=4))
def test_alnum_sku_either_valid_or_refused_with_reason(parts):
    try:
        s = sku.alnum_sku(*parts)
    except sku.SkuError as e:
        assert str(e).strip()
    else:
        assert sku.valid_sku(s) and len(s) <= sku.ALNUM_MAX_LEN and not s.isdigit()


# ---------------------------------------------------------------- money

@pytest.mark.parametrize(("text", "minor"), [("12.50", 1250), ("12.5", 1250), ("12", 1200), ("0", 0),
                                             ("0.01", 1), (" 3.99 ", 399), ("999999.99", 99_999_999)])
def test_parse_price(text, minor):
    assert money.parse_price(text) == minor


@pytest.mark.parametrize(("text", "why"), [
    ("12.505", "more than two decimals"), ("0.001", "more than two decimals"),
    ("-1", "negative"), ("-0.50", "negative"), ("NaN", "not a number"), ("inf", "not a number"),
    ("1,000.00", "thousands separators"), ("1 000", "thousands separators"), ("12,50", "decimal point"),
    ("1e3", "exponent"), (".5", "digit before"), ("01.00", "leading zeros"), ("12.", "no digits after"),
    ("", "empty"), ("+3", "without a sign"), ("€3", "not a price"), ("1000000", "above the limit"),
])
def test_parse_price_refusals(text, why):
    with pytest.raises(money.MoneyError, match=why):
        money.parse_price(text)


def test_zero_and_three_decimal_currencies():
    assert money.parse_price("1200", "JPY") == 1200
    assert money.format_price(1200, "JPY") == "1200 JPY"
    with pytest.raises(money.MoneyError, match="no decimals allowed for JPY"):
        money.parse_price("12.5", "JPY")
    with pytest.raises(money.MoneyError, match="three decimals"):
        money.parse_price("1", "KWD")
    with pytest.raises(money.MoneyError, match="ISO 4217"):
        money.parse_price("1", "eur")


@pytest.mark.parametrize(("text", "bp"), [("20", 2000), ("7.5", 750), ("5.55%", 555), ("0", 0), ("100", 10000)])
def test_parse_tax_rate(text, bp):
    assert money.parse_tax_rate(text) == bp
    assert money.parse_tax_rate(money.format_tax_rate(bp)) == bp


@pytest.mark.parametrize(("text", "why"), [("100.01", "above 100"), ("-5", "negative"), ("5.555", "two decimals"),
                                           ("", "empty"), ("abc", "not a"), ("20,5", "decimal point")])
def test_parse_tax_rate_refusals(text, why):
    with pytest.raises(money.MoneyError, match=why):
        money.parse_tax_rate(text)


def test_format_price():
    assert money.format_price(1250, "EUR") == "12.50 EUR"
    assert money.format_price(5, "GBP") == "0.05 GBP"
    assert money.format_price(-5, "EUR") == "-0.05 EUR"
    with pytest.raises(money.MoneyError, match="integer minor units"):
        money.format_price(12.5, "EUR")


def test_rounding_is_half_up_once_per_line():
    # 25 cents net at 10 %: 2.5 cents of tax rounds up to 3 (banker's rounding would give 2).
    assert money.line_total(25, 1, 1000, tax_included=False) == (25, 3, 28)
    # Five units of 5 cents: the line's 2.5 cents rounds once to 3, not five units' 0.5 -> 1 each.
    assert money.line_total(5, 5, 1000, tax_included=False) == (25, 3, 28)
    # Tax included: 3 cents gross at 20 % holds 0.5 cents of tax -> 1.
    assert money.line_total(3, 1, 2000) == (2, 1, 3)
    assert money.line_total(1250, 3, 2000) == (3125, 625, 3750)
    assert money.round_half_up(-5, 2) == -3  # a refund's negation rounds the same magnitude


@pytest.mark.parametrize(("args", "why"), [((100, 0, 2000), "quantity"), ((100, 1.0, 2000), "quantity"),
                                           ((-1, 1, 2000), "unit price"), ((100, 1, 10001), "tax rate"),
                                           ((12.5, 1, 0), "unit price")])
def test_line_total_refusals(args, why):
    with pytest.raises(money.MoneyError, match=why):
        money.line_total(*args)


@props(300)
@given(st.integers(0, money.MAX_PRICE_MINOR), st.integers(1, money.MAX_QTY), st.integers(0, money.MAX_TAX_BP),
       st.booleans())
def test_line_total_adds_up_and_is_within_half_a_cent(unit, qty, bp, included):
    t = money.line_total(unit, qty, bp, tax_included=included)
    assert t.net + t.tax == t.gross and t.tax >= 0
    amount = unit * qty
    exact = Fraction(amount * bp, 10000 + bp) if included else Fraction(amount * bp, 10000)
    assert abs(t.tax - exact) <= Fraction(1, 2)
    if abs(t.tax - exact) == Fraction(1, 2):
        assert t.tax > exact  # halves go up
    assert money.order_total([t, t]) == (2 * t.net, 2 * t.tax, 2 * t.gross)


@props(300)
@given(st.integers(0, money.MAX_PRICE_MINOR))
def test_price_text_round_trips(minor):
    assert money.parse_price(money.format_amount(minor)) == minor


# ---------------------------------------------------------------- catalog CSV

def csv_of(*rows: str, header: str = HEADER) -> str:
    return "\n".join([header, *rows]) + "\n"


GOOD = "TEE-BLK-M,Tee,25.00,20,12,kit-a,FEST25"


def refused(text: str) -> list[str]:
    products, errors = parse_catalog_csv(text)
    assert errors and products == []
    return [str(e) for e in errors]


def test_example_catalog_imports():
    products, errors = parse_catalog_csv(EXAMPLE.read_text(encoding="utf-8"))
    assert errors == []
    assert len(products) == 6
    by_name = {(p.name, p.variant_text()): p for p in products}
    assert by_name[("Night-market tee", "white / L")].sku == "TEE-WHI-L"
    assert sku.is_rcn13(by_name[("Tote bag", "natural")].sku)
    stickers = by_name[("Sticker pack, 5 pcs", "")]
    assert (stickers.price, stickers.tax_bp, stickers.price_version) == (400, 750, 1)
    assert by_name[("Risograph print A3", "first run")].variants == {"edition": "first run"}


@pytest.mark.parametrize(("row", "message"), [
    ("TEE-BLK-M,Tee,25.005,20,12,kit-a,FEST25", "line 2, price: price '25.005': more than two decimals"),
    ("TEE-BLK-M,Tee,-25,20,12,kit-a,FEST25", "line 2, price: price '-25': negative prices are not allowed"),
    ("TEE-BLK-M,Tee,\"1,000.00\",20,12,kit-a,FEST25", "line 2, price: price '1,000.00': use '.'"),
    ("TEE-BLK-M,Tee,nan,20,12,kit-a,FEST25", "line 2, price: price 'nan': not a number"),
    ("TEE-BLK-M,Tee,,20,12,kit-a,FEST25", "line 2, price: price is empty"),
    ("TEE-BLK-M,Tee,25,120,12,kit-a,FEST25", "line 2, tax_rate: tax rate '120' is above 100 %"),
    ("TEE-BLK-M,Tee,25,20,-3,kit-a,FEST25", "line 2, stock: '-3': a whole number 0..99999 (negative stock only"),
    ("TEE-BLK-M,Tee,25,20,2.5,kit-a,FEST25", "line 2, stock: '2.5': a whole number"),
    ("TEE-BLK-M,Tee,25,20,,kit-a,FEST25", "line 2, stock: empty"),
    ("TEE-BLK-M,Tee,25,20,12,Kit A,FEST25", "line 2, kit: 'Kit A': a kit id"),
    ("TEE-BLK-M,Tee,25,20,12,kit-a,FEST 25", "line 2, event: 'FEST 25': an event id"),
    ("TEE-BLK-M,,25,20,12,kit-a,FEST25", "line 2, name: empty"),
    ("TEE-BLK-M," + "x" * 61 + ",25,20,12,kit-a,FEST25", "line 2, name: 61 characters; at most 60"),
    ("0400000000016,Tee,25,20,12,kit-a,FEST25", "line 2, sku: numeric SKU '0400000000016' must be a 13-digit EAN-13"),
    ("2000000000008,Tee,25,20,12,kit-a,FEST25", "line 2, sku: EAN-13 '2000000000008' has a country-specific"),
    ("TEE_BLK,Tee,25,20,12,kit-a,FEST25", "line 2, sku: SKU 'TEE_BLK': uppercase A-Z and 0-9"),
    ("TEE-BLACK-M,Tee,25,20,12,kit-a,FEST25", "line 2, sku: SKU 'TEE-BLACK-M' is 11 characters; at most 9"),
    ("TEE-BLK-M,Tee,25,20,12,kit-a,FEST25,extra", "line 2: 8 cells but the header has 7 columns"),
])
def test_each_bad_cell_names_line_field_and_reason(row, message):
    errors = refused(csv_of(GOOD.replace("TEE-BLK-M", "TEE-BLK-L"), row))
    assert len(errors) == 1, errors
    assert errors[0].replace("line 3", "line 2").startswith(message), errors


@pytest.mark.parametrize(("header", "rows", "message"), [
    ("sku,name,price,stock,kit,event", [], "line 1: missing required column tax_rate; required: sku, name, price"),
    ("name,price,tax_rate,stock", [], "line 1: missing required columns sku, kit, event"),
    (HEADER + ",color", [], "line 1, color: unknown column (did you mean 'colour'?)"),
    (HEADER + ",weight", [], "line 1, weight: unknown column; known: sku, name"),
    (HEADER + ",size,size", [], "line 1, size: column appears twice"),
    (HEADER + ",", [], "line 1, column 8: empty column name"),
    (HEADER, [], "line 2: no products: the file has a header only"),
])
def test_header_problems(header, rows, message):
    errors = refused(csv_of(*rows, header=header) if rows else header + "\n")
    assert any(e.startswith(message) for e in errors), errors


def test_empty_file():
    assert refused("") == ["line 1: empty file: a header line is required: sku,name,price,tax_rate,stock,kit,event"]


def test_generation_columns():
    head = HEADER + ",colour,size,sku_kind,code"
    products, errors = parse_catalog_csv(csv_of(",Tee,25,20,1,kit-a,FEST25,black,M,alnum,TEE",
                                                ",Festival tee,25,20,1,kit-a,FEST25,black,L,alnum,",
                                                ",Tee,25,20,1,kit-a,FEST25,black,S,rcn,", header=head))
    assert errors == []
    assert [p.sku for p in products[:2]] == ["TEE-BLA-M", "FES-BLA-L"]
    assert sku.is_rcn13(products[2].sku)
    # Variant parts shrink to 2, then 1 character when 3 would not fit the label.
    squeezed, errors = parse_catalog_csv(csv_of(",Tee,25,20,1,kit-a,FEST25,black,XXL,alnum,",
                                                ",Tee,25,20,1,kit-a,FEST25,black,XXL,alnum,TOTE", header=head))
    assert errors == [] and [p.sku for p in squeezed] == ["TEE-BL-XX", "TOTE-B-X"]
    for row, message in [
        (",Tee,25,20,1,kit-a,FEST25,black,M,ean8,", "line 2, sku_kind: 'ean8': rcn (numeric RCN-13, the default)"),
        ("TEE-BLK-M,Tee,25,20,1,kit-a,FEST25,black,M,alnum,", "line 2, sku_kind: given with a sku"),
        (",Tee,25,20,1,kit-a,FEST25,black,M,alnum,TSHIRTS",
         "line 2, sku: generated alnum SKU: SKU 'TSHIRTS-B-M' is 11 characters; at most 9"),
        (",***,25,20,1,kit-a,FEST25,,,alnum,", "line 2, sku: generated alnum SKU: cannot make"),
    ]:
        errors = refused(csv_of(row, header=head))
        assert len(errors) == 1 and errors[0].startswith(message), (row, errors)


def test_generated_skus_are_deterministic_and_order_free():
    head = HEADER + ",colour,size"
    rows = [",Tee,25,20,1,kit-a,FEST25,black,M", ",Tee,25,20,1,kit-a,FEST25,black,L", ",Poster,9,20,1,kit-a,FEST25,,"]
    a, _ = parse_catalog_csv(csv_of(*rows, header=head))
    b, _ = parse_catalog_csv(csv_of(*reversed(rows), header=head))
    c, _ = parse_catalog_csv(csv_of(*(r.replace("Tee", " tee ").replace("kit-a", "kit-b") for r in rows), header=head))
    assert [p.sku for p in a] == [p.sku for p in reversed(b)] == [p.sku for p in c]
    assert len({p.sku for p in a}) == 3 and all(sku.is_rcn13(p.sku) for p in a)


def test_duplicate_skus_refused():
    assert refused(csv_of(GOOD, "TEE-BLK-L,Tee,25,20,1,kit-a,FEST25", GOOD.replace("12", "3"))) == [
        "line 4, sku: TEE-BLK-M already on line 2 for kit kit-a, event FEST25"]
    generated = csv_of(",Tee,25,20,1,kit-a,FEST25", ",Tee,25,20,5,kit-a,FEST25")
    assert refused(generated) == [f"line 3, sku: {catalog.generated_rcn('Tee', {})} already on line 2 for kit kit-a, "
                                  "event FEST25 (generated: give one a sku)"]


def test_one_sku_is_one_product_across_kits_and_events():
    ok, errors = parse_catalog_csv(csv_of(GOOD, GOOD.replace("kit-a", "kit-b").replace("25.00", "22")))
    assert errors == [] and len(ok) == 2  # same product, another kit, its own price and stock
    assert refused(csv_of(GOOD, GOOD.replace("kit-a", "kit-b").replace("Tee", "Mug"))) == [
        "line 3, sku: TEE-BLK-M is a different product on line 2"]


def test_all_or_nothing_and_every_problem_reported():
    text = csv_of(GOOD, "TEE-BLK-S,Tee,25.001,20,1,kit-a,FEST25", "TEE-BLK-L,Tee,25,20,x,kit-a,fest 25",
                  "TEE-BLK-X,Tee,25,20,1,kit-a,FEST25")
    errors = refused(text)
    assert [e.split(":")[0] for e in errors] == ["line 3, price", "line 4, stock", "line 4, event"]


def test_line_numbers_follow_the_file_across_quoted_newlines_and_blank_lines():
    text = csv_of('TEE-BLK-S,"Tee\nsmall",25,20,1,kit-a,FEST25', "", GOOD.replace("25.00", "2.555"))
    errors = refused(text)
    assert errors[0].startswith("line 2, name: contains a control character")
    assert errors[-1].startswith("line 5, price: price '2.555'")


def test_spreadsheet_line_endings_keep_line_numbers():
    text = csv_of(GOOD, "", GOOD.replace("TEE-BLK-M", "TEE-BLK-L").replace("25.00", "2.555")).replace("\n", "\r\n")
    assert refused(text) == ["line 4, price: price '2.555': more than two decimals"]


def test_broken_quoting_and_bom():
    assert refused(csv_of('TEE-BLK-M,"Tee,25,20,1,kit-a,FEST25'))[0].startswith("line 2: not valid CSV")
    products, errors = parse_catalog_csv("\ufeff" + csv_of(GOOD))
    assert errors == [] and products[0].sku == "TEE-BLK-M"


def test_kinds_of_error_are_line_errors():
    _, errors = parse_catalog_csv(csv_of("TEE-BLK-M,Tee,1.234,20,1,kit-a,FEST25"))
    assert errors == [LineError(2, "price", "price '1.234': more than two decimals")]


# ---------------------------------------------------------------- round trip and versions

_word = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789éß,\"'", min_size=1,
                max_size=8)


@st.composite
def products(draw):
    n = draw(st.integers(1, 6))
    out, used = [], set()
    for i in range(n):
        name = " ".join(draw(st.lists(_word, min_size=1, max_size=3)))[: catalog.NAME_MAX]
        variants = {k: v for k, v in (("colour", draw(st.one_of(st.none(), _word))),
                                      ("size", draw(st.one_of(st.none(), _word))),
                                      ("material", draw(st.one_of(st.none(), _word)))) if v}
        code = draw(st.one_of(st.builds(sku.rcn13, st.integers(1, sku.RCN_MAX_ITEM)),
                              st.just(f"P{i}-X")))
        if code in used:
            continue
        used.add(code)
        cur = draw(st.sampled_from(["EUR", "JPY", "GBP"]))
        price = draw(st.integers(0, money.MAX_PRICE_MINOR))
        out.append(Product(sku=code, name=name, currency=cur, variants=variants, stock=draw(st.integers(0, 99_999)),
                           kit=draw(st.sampled_from(["kit-a", "nm_2"])), event="FEST25",
                           prices=(PriceVersion(version=1, price=price, tax_bp=draw(st.integers(0, 10000)),
                                                from_ms=0),)))
    return out


@props(150)
@given(products())
def test_export_then_import_round_trips(ps):
    back, errors = parse_catalog_csv(catalog.export_catalog_csv(ps))
    assert errors == []
    assert back == ps


def test_example_round_trips_through_csv_and_json():
    ps, _ = parse_catalog_csv(EXAMPLE.read_text(encoding="utf-8"))
    assert parse_catalog_csv(catalog.export_catalog_csv(ps)) == (ps, [])
    repriced = [catalog.reprice(ps[0], 2000, 2000, 1_000), *ps[1:]]
    doc = json.loads(json.dumps(catalog.catalog_json(repriced)))
    assert catalog.catalog_from_json(doc) == repriced


def test_price_changes_are_new_versions():
    p, = parse_catalog_csv(csv_of(GOOD), from_ms=1_000)[0]
    q = catalog.reprice(p, 2000, 2000, 5_000)
    r = catalog.reprice(q, 1800, 700, 9_000)
    assert (r.price, r.tax_bp, r.price_version) == (1800, 700, 3)
    assert catalog.price_version(r, 1).price == 2500  # what an order sold at version 1 keeps
    assert [catalog.price_at(r, t).version for t in (0, 1_000, 4_999, 5_000, 8_999, 9_000, 10**13)] == [1, 1, 1, 2, 2, 3, 3]
    assert p.price == 2500 and p.price_version == 1  # the old product is untouched (frozen)
    with pytest.raises(ValueError, match="at or after version 3"):
        catalog.reprice(r, 100, 0, 8_000)
    with pytest.raises(KeyError, match="no price version 4"):
        catalog.price_version(r, 4)
    with pytest.raises(ValueError, match="versions must be 1, 2, 3"):
        Product(sku="TEE-BLK-M", name="Tee", stock=1, kit="kit-a", event="FEST25",
                prices=(PriceVersion(version=2, price=1, tax_bp=0, from_ms=0),))


def test_catalog_json_refuses_other_documents():
    with pytest.raises(ValueError, match="popkit-catalog/1"):
        catalog.catalog_from_json({"products": []})


def test_docs_example_is_the_example_file():
    text = (REPO / "docs" / "retail.md").read_text(encoding="utf-8")
    block = re.search(r"```csv\n(.*?)```", text, re.S)
    assert block and block.group(1) == EXAMPLE.read_text(encoding="utf-8")


# ---------------------------------------------------------------- popkit retail

def test_cli_sku(capsys):
    assert main(["retail", "sku", "--rcn", "1"]) == 0
    assert main(["retail", "sku", "--alnum", "tee", "blk", "m"]) == 0
    assert main(["retail", "sku", "--check", "4006381333931"]) == 0
    assert capsys.readouterr().out.split("\n")[:3] == ["0400000000015", "TEE-BLK-M", "4006381333931: ean13"]
    assert main(["retail", "sku", "--rcn", "0"]) == 1
    assert main(["retail", "sku", "--alnum", "T-E"]) == 1
    assert main(["retail", "sku", "--check", "0400000000016"]) == 1
    err = capsys.readouterr().err
    assert "between 1 and 9999999999, got 0" in err and "only letters A-Z" in err and "check digit" in err


def test_cli_import_export(tmp_path, capsys):
    out = tmp_path / "catalog.json"
    assert main(["retail", "import", str(EXAMPLE), "--out", str(out)]) == 0
    assert "6 products ok for kit night-market, event NM26" in capsys.readouterr().out
    assert main(["retail", "import", str(EXAMPLE), "--out", str(out)]) == 1
    assert "exists; --force" in capsys.readouterr().err
    back = tmp_path / "back.csv"
    assert main(["retail", "export", str(out), "--out", str(back)]) == 0
    assert parse_catalog_csv(back.read_text()) == parse_catalog_csv(EXAMPLE.read_text())


def test_cli_import_refuses_bad_file_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text(csv_of(GOOD, "TEE-BLK-L,Tee,9.999,20,1,kit-a,FEST25"))
    out = tmp_path / "catalog.json"
    assert main(["retail", "import", str(bad), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{bad} line 3, price: price '9.999': more than two decimals" in err
    assert "1 problem; nothing imported" in err
    assert not out.exists()
    notjson = tmp_path / "x.json"
    notjson.write_text("{}")
    assert main(["retail", "export", str(notjson), "--out", str(tmp_path / "x.csv")]) == 1
    assert "popkit-catalog/1" in capsys.readouterr().err


_cells = st.sampled_from(["", "TEE-BLK-M", "0400000000015", "Tee", "25.00", "2.555", "-1", "20", "7.5", "12", "x",
                          "kit-a", "FEST25", "black", "M", "alnum", "rcn", "\"", ",", "\n", "\x00", "é", " ", "EUR"])


@props(400)
@given(st.lists(st.lists(_cells, max_size=10).map(",".join), max_size=6),
       st.sampled_from([HEADER, HEADER + ",colour,size,sku_kind,code", "sku,name", ""]))
def test_any_text_gives_products_or_located_errors_never_a_crash(lines, header):
    text = "\n".join([header, *lines])
    products, errors = parse_catalog_csv(text)
    assert (products == []) != (errors == [])
    n_lines = text.count("\n") + 1
    for e in errors:
        assert 1 <= e.line <= n_lines + 1 and e.reason.strip() and not e.reason.endswith(":")
    for p in products:
        assert sku.valid_sku(p.sku)


@props(300)
@given(st.text(max_size=300))
def test_arbitrary_text_never_crashes(text):
    products, errors = parse_catalog_csv(HEADER + "\n" + text)
    assert (products == []) != (errors == [])
    assert all(str(e).strip() for e in errors)
