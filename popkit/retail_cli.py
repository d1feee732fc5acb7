"""Micro-retail's catalog from the command line (issue 19, docs/retail.md):

    popkit retail sku --rcn N | --alnum TEE BLK M | --check CODE
    popkit retail import catalog.csv [--out catalog.json] [--force]
    popkit retail import catalog.csv --kit KIT --fleet URL      (POPKIT_TOKEN: a crew or ops token)
    popkit retail export catalog.json --out catalog.csv [--force]
    popkit retail labels CATALOG.json|.csv --template T [--sku SKU ...] [--all-stock | --copies N]
                         [--kit KIT] [--event EVENT] (--printer PORT [--kind tspl|escpos] | --png-dir DIR)

``labels`` plans the whole batch first (kits/retail/batch.py): any refusal (a SKU not in the
catalog, a label that does not fit) is listed and nothing prints (exit 1). A printer that stops
mid-batch (paper out) exits 3 after saying what printed, what did not, and the command line that
finishes the batch. ``--png-dir`` prints into the TSPL simulator and writes its labels as PNGs.

``import`` checks every line and prints each problem as ``FILE line N, COLUMN: reason``; any
problem exits 1 and writes nothing (all or nothing). ``--out`` writes the normalised catalog as
JSON, price history included; ``--fleet`` sends it to the fleet as the kit's catalog (it replaces
the catalog of each event the file names; a changed price becomes a new version there).
"""

from __future__ import annotations

import argparse
import json
import shlex
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


def _load_catalog(path: Path) -> list[catalog.Product] | None:
    text = _read(path)
    if text is None:
        return None
    if path.suffix.lower() == ".csv":
        products, errors = catalog.parse_catalog_csv(text)
        for e in errors:
            print(f"{path} {e}", file=sys.stderr)
        return None if errors else products
    try:
        return catalog.catalog_from_json(json.loads(text))
    except ValueError as e:
        print(f"popkit retail labels: {path}: {e}", file=sys.stderr)
        return None


def _reprint_lines(args: argparse.Namespace, jobs: list) -> list[str]:
    from kits.retail.batch import remaining

    base = ["popkit", "retail", "labels", args.catalog, "--template", args.template]
    for flag in ("kit", "event"):
        if getattr(args, flag):
            base += [f"--{flag}", getattr(args, flag)]
    base += ["--printer", args.printer, "--kind", args.kind] if args.printer else ["--png-dir", args.png_dir]
    return [shlex.join(base + ["--sku", *skus, "--copies", str(n)]) for n, skus in remaining(jobs).items()]


def _labels(args: argparse.Namespace) -> int:
    from kits.retail import batch
    from kits.retail.labels import LabelError, template

    if args.png_dir and args.kind != "tspl":
        print("popkit retail labels: --png-dir previews on the TSPL simulator; leave out --kind", file=sys.stderr)
        return 2
    try:
        t = template(args.template)
    except LabelError as e:
        print(f"popkit retail labels: {e}", file=sys.stderr)
        return 1
    products = _load_catalog(Path(args.catalog))
    if products is None:
        print("popkit retail labels: the catalog has problems; nothing printed", file=sys.stderr)
        return 1
    try:
        p = batch.plan(batch.select(products, args.kit, args.event), t, args.sku, args.all_stock,
                       args.copies or 1, args.kind)
    except ValueError as e:
        print(f"popkit retail labels: {e}", file=sys.stderr)
        return 2
    if p.skipped:
        print(f"no stock, no labels: {', '.join(p.skipped)}")
    if p.refused:
        for r in p.refused:
            print(f"refused {r}", file=sys.stderr)
        print(f"popkit retail labels: {len(p.refused)} refused; nothing printed", file=sys.stderr)
        return 1
    if not p.jobs:
        print("nothing to print")
        return 0
    if args.png_dir:
        return _preview(args, t, p)
    from agent.drivers.escpos import EscPosPrinter
    from agent.drivers.tspl import TsplPrinter
    from agent.errors import DriverError
    from agent.labelprint import print_batch

    opener = TsplPrinter.open if args.kind == "tspl" else EscPosPrinter.open
    try:
        printer = opener(args.printer)
    except DriverError as e:
        print(f"popkit retail labels: {e}; nothing printed", file=sys.stderr)
        return 1
    with printer:
        result = print_batch(printer, args.kind, t, p.jobs)
    return _report(args, p, result)


def _report(args: argparse.Namespace, p, result) -> int:
    n = sum(j.copies for j in result.printed)
    if result.complete:
        print(f"{n} label{'s' if n != 1 else ''} printed ({len(p.jobs)} job{'s' if len(p.jobs) != 1 else ''}, "
              f"template {args.template})")
        return 0
    print(f"popkit retail labels: stopped: {result.error}", file=sys.stderr)
    printed = batch_counts(result.printed)
    print(f"printed: {printed or 'none'}", file=sys.stderr)
    if result.uncertain:
        print(f"may have printed (check the roll): {batch_counts(result.uncertain)}", file=sys.stderr)
    print(f"not printed: {batch_counts(result.not_printed) or 'none'}", file=sys.stderr)
    left = result.uncertain + result.not_printed
    if left:
        print("to finish, fix the printer and run:", file=sys.stderr)
        for line in _reprint_lines(args, left):
            print(f"  {line}", file=sys.stderr)
    return 3


def batch_counts(jobs: list) -> str:
    """"A x3, B x1" in batch order, copies of a SKU added up."""
    counts: dict[str, int] = {}
    for j in jobs:
        counts[j.sku] = counts.get(j.sku, 0) + j.copies
    return ", ".join(f"{sku} x{n}" for sku, n in counts.items())


def _preview(args: argparse.Namespace, t, p) -> int:
    """Print into the TSPL simulator through the real driver; one PNG per label design."""
    from agent.drivers.tspl import TsplPrinter
    from agent.labelprint import print_batch
    from simulators.tspl import TsplSimulator

    out = Path(args.png_dir)
    out.mkdir(parents=True, exist_ok=True)
    with TsplSimulator() as sim:
        with TsplPrinter.open(sim.path, status_timeout=5.0) as printer:
            result = print_batch(printer, "tspl", t, p.jobs)
        # The driver's status reply after the last job proves the printer read every byte
        # before it: the simulator runs commands in order as they arrive.
        labels = list(sim.labels)
        bad = list(sim.bad_commands)
    for line, reason in bad:
        print(f"simulator refused {line!r}: {reason}", file=sys.stderr)
    for i, (job, label) in enumerate(zip(result.printed, labels), start=1):
        label.to_png(out / f"{i:03d}-{job.sku}-x{label.copies}.png")
    if bad or len(labels) != len(result.printed):
        print(f"popkit retail labels: the simulator printed {len(labels)} of {len(result.printed)} labels",
              file=sys.stderr)
        return 1
    code = _report(args, p, result)
    print(f"-> {len(labels)} PNG{'s' if len(labels) != 1 else ''} in {out}")
    return code


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
    lb = retail.add_parser("labels", help="print labels for all stock, for some SKUs, or a reprint (docs/labels.md)")
    lb.add_argument("catalog", metavar="CATALOG.json|.csv")
    lb.add_argument("--template", required=True, help="a built-in label template, e.g. shelf-40x30")
    lb.add_argument("--sku", nargs="+", metavar="SKU", help="only these SKUs (default with --all-stock: all)")
    many = lb.add_mutually_exclusive_group()
    many.add_argument("--all-stock", action="store_true", help="one label per unit of stock carried")
    many.add_argument("--copies", type=int, metavar="N", help="N labels of each --sku (default 1)")
    lb.add_argument("--kit", help="only the catalog rows of this kit")
    lb.add_argument("--event", help="only the catalog rows of this event")
    where = lb.add_mutually_exclusive_group(required=True)
    where.add_argument("--printer", metavar="PORT", help="the printer's port, e.g. /dev/ttyUSB0 or /dev/usb/lp0")
    where.add_argument("--png-dir", metavar="DIR", help="no printer: print into the TSPL simulator, PNGs in DIR")
    lb.add_argument("--kind", choices=("tspl", "escpos"), default="tspl", help="printer language (default tspl)")
    lb.set_defaults(func=_labels)
