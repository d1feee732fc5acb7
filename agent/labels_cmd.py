"""The fleet's ``labels`` command (kits/retail/labelcmd.py): labels from the dashboard, printed on
one of the kit's printers.

Each label is rendered here, from the till's catalog when the till has the SKU for that event (the
price the till sells at) and otherwise from what the command carries. The whole command is checked
before anything is queued, as the CLI's batch is (kits/retail/batch.py): one label that cannot
print refuses the command and queues nothing, and the ack names every refused SKU.

Labels go through the printer's print queue (agent/printing.py), one job per label as the receipt
printer has no copy count: they survive an agent restart, wait while the paper is out, and a
printer stopping mid-batch leaves the rest queued, not lost. The ack says how many were queued and
their job ids; the queue's own state says when they printed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from pydantic import ValidationError

from agent.printing import PrintQueue
from kits.retail.catalog import Product
from kits.retail.labelcmd import LabelsArgs
from kits.retail.labels import LabelError, escpos_job, product_fields, template

if TYPE_CHECKING:
    from agent.till.service import Till

MAX_DETAIL = 200  # an ack's detail (kits/contract.py)


def _short(text: str) -> str:
    return text if len(text) <= MAX_DETAIL else text[:MAX_DETAIL - 1] + "…"


def _bad_args(exc: ValidationError) -> str:
    e = exc.errors()[0]
    where = ".".join(str(p) for p in e["loc"])
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"labels: {where}: {e['msg']}{more}"


def _printer(args: LabelsArgs, queues: Mapping[str, PrintQueue]) -> str:
    if args.printer is not None:
        if args.printer not in queues:
            raise LookupError(f"labels: {args.printer} is not a printer of this kit "
                              f"({', '.join(sorted(queues)) or 'it has none'})")
        return args.printer
    if not queues:
        raise LookupError("labels: this kit has no printer")
    return sorted(queues)[0]


def label_jobs(args: LabelsArgs, catalog: Iterable[Product] = ()) -> tuple[list[tuple[str, int, dict]], list[str]]:
    """(sku, count, ESC/POS job) per item, and the refusals ("SKU: reason"), every label checked."""
    t = template(args.template)  # LabelError: an unknown template refuses the command
    till = {p.sku: p for p in catalog if p.event == args.event}
    jobs, refused = [], []
    for item in args.items:
        fields = product_fields(till[item.sku]) if item.sku in till else item.fields()
        try:
            jobs.append((item.sku, item.n, escpos_job(t, fields)))
        except LabelError as exc:
            refused.append(f"{item.sku}: {exc}")
    return jobs, refused


def run_labels(raw_args: dict, queues: Mapping[str, PrintQueue], till: Till | None = None) -> tuple[str, str]:
    """The agent's answer to a ``labels`` command: ("ok", what was queued) or ("rejected", why).
    Blocking (a committed SQLite write per label): call it off the event loop."""
    try:
        args = LabelsArgs.model_validate(raw_args)
    except ValidationError as exc:
        return "rejected", _short(_bad_args(exc))
    try:
        printer = _printer(args, queues)
        jobs, refused = label_jobs(args, till.catalog() if till is not None else ())
    except (LookupError, LabelError) as exc:
        return "rejected", _short(str(exc) if str(exc).startswith("labels:") else f"labels: {exc}")
    if refused:
        return "rejected", _short(f"labels: {len(refused)} refused, nothing queued: " + "; ".join(refused))
    queue = queues[printer]
    ids = [queue.enqueue(job) for _sku, n, job in jobs for _ in range(n)]
    part = f" (part {args.part[0]} of {args.part[1]})" if args.part[1] > 1 else ""
    skus = len(jobs)
    return "ok", _short(f"{len(ids)} label{'s' if len(ids) != 1 else ''} of {skus} SKU{'s' if skus != 1 else ''} "
                        f"queued on {printer}{part}: jobs {ids[0]}-{ids[-1]}")
