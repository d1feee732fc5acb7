"""Micro-retail's catalog from the command line (issue 19, docs/retail.md):

    popkit retail sku --rcn N | --alnum TEE BLK M | --check CODE
    popkit retail import catalog.csv [--out catalog.json] [--force]
    popkit retail export catalog.json --out catalog.csv [--force]

``import`` checks every line and prints each problem as ``FILE line N, COLUMN: reason``; any
problem exits 1 and writes nothing (all or nothing). Until the fleet stores catalogs
(fleet/retail), the normalised catalog is written as JSON, price history included.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kits.retail import catalog, sku


def _sku(args: argparse.Namespace) -> int:
    try:
        if args.rcn is not None:
            print(sku.rcn13(args.rcn))
        elif args.alnum:
            print(sku.alnum_sku(*args.alnum))
        else:
            problem = sku.sku_problem(args.check)
            if problem:
                print(f"popkit retail sku: {problem}", file=sys.stderr)
                return 1
            print(f"{args.check}: {sku.barcode_kind(args.check)}")
    except sku.SkuError as e:
        print(f"popkit retail sku: {e}", file=sys.stderr)
        return 1
    return 0


def _write(path: Path, text: str, force: bool) -> bool:
    if path.exists() and not force:
        print(f"popkit retail: {path} exists; --force replaces it", file=sys.stderr)
        return False
    path.write_text(text, encoding="utf-8")
    return True


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        print(f"popkit retail: cannot read {path}: {e}", file=sys.stderr)
        return None


def _import(args: argparse.Namespace) -> int:
    src = Path(args.csv)
    text = _read(src)
    if text is None:
        return 1
    products, errors = catalog.parse_catalog_csv(text)
    if errors:
        for e in errors:
            print(f"{src} {e}", file=sys.stderr)
        print(f"popkit retail import: {len(errors)} problem{'s' if len(errors) != 1 else ''}; nothing imported",
              file=sys.stderr)
        return 1
    kits = sorted({p.kit for p in products})
    events = sorted({p.event for p in products})
    print(f"{len(products)} products ok for kit{'s' if len(kits) > 1 else ''} {', '.join(kits)}, "
          f"event{'s' if len(events) > 1 else ''} {', '.join(events)}")
    if args.out:
        if not _write(Path(args.out), json.dumps(catalog.catalog_json(products), indent=1) + "\n", args.force):
            return 1
        print(f"-> {args.out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    text = _read(Path(args.json))
    if text is None:
        return 1
    try:
        products = catalog.catalog_from_json(json.loads(text))
    except ValueError as e:  # json.JSONDecodeError and pydantic's ValidationError are ValueErrors
        print(f"popkit retail export: {args.json}: {e}", file=sys.stderr)
        return 1
    if not _write(Path(args.out), catalog.export_catalog_csv(products), args.force):
        return 1
    print(f"{len(products)} products -> {args.out}")
    return 0


def add_parsers(sub) -> None:
    """``popkit retail ...`` into ``popkit``'s subparsers."""
    retail = sub.add_parser("retail", help="the stall's catalog and SKUs (docs/retail.md)"
                            ).add_subparsers(dest="retail_command", required=True)
    s = retail.add_parser("sku", help="make an RCN-13 or alphanumeric SKU, or check one")
    how = s.add_mutually_exclusive_group(required=True)
    how.add_argument("--rcn", type=int, metavar="N", help="RCN-13 (EAN-13, prefix 04) for item number N")
    how.add_argument("--alnum", nargs="+", metavar="PART", help="product then variant codes, e.g. TEE BLK M")
    how.add_argument("--check", metavar="SKU", help="say whether SKU is usable and which barcode prints it")
    s.set_defaults(func=_sku)
    im = retail.add_parser("import", help="check a catalog CSV line by line; all or nothing")
    im.add_argument("csv", metavar="CATALOG.csv")
    im.add_argument("--out", metavar="FILE.json", help="write the normalised catalog (SKUs filled in) as JSON")
    im.add_argument("--force", action="store_true", help="replace --out if it exists")
    im.set_defaults(func=_import)
    ex = retail.add_parser("export", help="a catalog JSON back to CSV")
    ex.add_argument("json", metavar="CATALOG.json")
    ex.add_argument("--out", required=True, metavar="FILE.csv")
    ex.add_argument("--force", action="store_true", help="replace --out if it exists")
    ex.set_defaults(func=_export)
