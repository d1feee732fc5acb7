"""Micro-retail's catalog from the command line (issue 19, docs/retail.md):

    popkit retail sku --rcn N | --alnum TEE BLK M | --check CODE
    popkit retail import catalog.csv [--out catalog.json] [--force]
    popkit retail import catalog.csv --kit KIT --fleet URL      (POPKIT_TOKEN: a crew or ops token)
    popkit retail export catalog.json --out catalog.csv [--force]

``import`` checks every line and prints each problem as ``FILE line N, COLUMN: reason``; any
problem exits 1 and writes nothing (all or nothing). ``--out`` writes the normalised catalog as
JSON, price history included; ``--fleet`` sends it to the fleet as the kit's catalog (it replaces
the catalog of each event the file names; a changed price becomes a new version there).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kits.retail import catalog, sku
from popkit import fleetapi


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
    if bool(args.fleet) != bool(args.kit):
        print("popkit retail import: --fleet and --kit go together", file=sys.stderr)
        return 2
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
    if args.fleet:
        return _send(args, products)
    return 0


def _send(args: argparse.Namespace, products: list[catalog.Product]) -> int:
    """POST the checked catalog to the fleet (its JSON form: the fleet checks it again)."""
    other = sorted({p.kit for p in products if p.kit != args.kit})
    if other:
        print(f"popkit retail import: the file has products for kit {', '.join(other)}, not {args.kit}; "
              f"nothing sent", file=sys.stderr)
        return 1
    try:
        r = fleetapi.call(args.fleet, "POST", f"/api/v1/kits/{args.kit}/catalog", catalog.catalog_json(products),
                          timeout=args.timeout)
    except fleetapi.FleetRefused as e:
        print(f"popkit retail import: {e}", file=sys.stderr)
        return 1
    counts = ", ".join(f"{len(r[k])} {k}" for k in ("added", "repriced", "updated", "unchanged", "removed"))
    print(f"fleet: kit {r['kit']}, event{'s' if len(r['events']) > 1 else ''} {', '.join(r['events'])}: {counts}")
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
    im.add_argument("--fleet", metavar="URL", help="send it to the fleet as the kit's catalog (POPKIT_TOKEN)")
    im.add_argument("--kit", metavar="KIT", help="the kit whose catalog it is (with --fleet)")
    im.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the fleet (default 30)")
    im.set_defaults(func=_import)
    ex = retail.add_parser("export", help="a catalog JSON back to CSV")
    ex.add_argument("json", metavar="CATALOG.json")
    ex.add_argument("--out", required=True, metavar="FILE.csv")
    ex.add_argument("--force", action="store_true", help="replace --out if it exists")
    ex.set_defaults(func=_export)
