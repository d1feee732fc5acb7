"""Batch label printing, the printing part: send a planned batch (kits/retail/batch.py) job by
job and say exactly which labels printed when the printer stops mid-batch.

``print_job`` asks the printer's status before each job and sends nothing while it cannot print
(paper out, head open, ...), so a batch stops cleanly at a job boundary: every job before it was
sent, that job and the rest were not. A link failure after a job's bytes went out leaves that job
``uncertain`` (it may have printed): it is named apart, so a crew checks the roll before reprinting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from agent.drivers.printer import Printer, PrinterNotReady
from agent.errors import DriverError
from kits.retail.batch import LabelJob
from kits.retail.labels import LabelTemplate, escpos_job, render_tspl


@dataclass
class BatchResult:
    printed: list[LabelJob] = field(default_factory=list)
    uncertain: list[LabelJob] = field(default_factory=list)
    not_printed: list[LabelJob] = field(default_factory=list)
    error: str | None = None  # why the batch stopped; None when every job was sent

    @property
    def complete(self) -> bool:
        return self.error is None


def _payloads(kind: str, t: LabelTemplate, job: LabelJob):
    """What goes to the printer for one job: TSPL carries the count in PRINT; the receipt
    printer has no copies command, so it gets one job per label (and can stop between them)."""
    if kind == "tspl":
        return [(job, render_tspl(t, job.fields, copies=job.copies))]
    from agent.drivers.receipt import Receipt

    receipt = Receipt.from_dict(escpos_job(t, job.fields))
    return [(LabelJob(job.sku, 1, job.fields), receipt)] * job.copies


def print_batch(printer: Printer, kind: str, t: LabelTemplate, jobs: list[LabelJob],
                after_each: Callable[[LabelJob], None] | None = None) -> BatchResult:
    """Print ``jobs`` in order; stop at the first job the printer refuses or fails.

    ``after_each`` is called once a job is sent (progress output; tests use it to run the
    simulator out of paper at a known point)."""
    units = [u for job in jobs for u in _payloads(kind, t, job)]
    result = BatchResult()
    for i, (job, payload) in enumerate(units):
        try:
            printer.print_job(payload)
        except PrinterNotReady as exc:
            result.error = "printer not ready: " + ("; ".join(str(p) for p in exc.problems) or str(exc))
            result.not_printed = [u for u, _ in units[i:]]
            return result
        except DriverError as exc:
            # Before the write nothing went out; after it the outcome is unknown. The driver
            # does not say which, so the job is uncertain rather than silently reprinted.
            result.error = f"printer failed: {exc}"
            result.uncertain = [job]
            result.not_printed = [u for u, _ in units[i + 1:]]
            return result
        result.printed.append(job)
        if after_each is not None:
            after_each(job)
    return result
