"""What the crew sees in the terminal during ``popkit kit up``: each step as it runs, then the verdict.

On a terminal, a live table (rich) redraws as steps start and finish; piped or logged (CI,
journald), one plain line per finished step, so the same run reads well in both.
"""

from __future__ import annotations

import sys
import threading

from agent.powerup import Report, Step, StepResult

_MARK = {"ok": "[green]✓[/]", "warn": "[yellow]![/]", "fault": "[red]✗[/]", "run": "[cyan]…[/]"}
_VERDICT = {"ready": "[bold green]READY[/]", "degraded": "[bold yellow]DEGRADED[/]",
            "not_ready": "[bold red]NOT READY[/]"}


def _mark(res: StepResult | None) -> str:
    if res is None:
        return "run"
    if any(p.severity == "fault" for p in res.problems):
        return "fault"
    return "warn" if res.problems else "ok"


class KitView:
    def __init__(self, kit_name: str, console=None):
        from rich.console import Console

        self.console = console or Console(file=sys.stdout, highlight=False, soft_wrap=True)
        self.live = self.console.is_terminal
        self.kit_name = kit_name
        self._rows: dict[str, tuple[Step, StepResult | None]] = {}
        self._lock = threading.Lock()
        self._live = None

    def __enter__(self) -> "KitView":
        if self.live:
            from rich.live import Live

            self._live = Live(self._table(), console=self.console, refresh_per_second=8, transient=False)
            self._live.__enter__()
        else:
            self.console.print(f"powering up {self.kit_name}")
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.update(self._table())
            self._live.__exit__(*exc)

    def progress(self, step: Step, res: StepResult | None) -> None:
        with self._lock:
            self._rows[step.device] = (step, res)
            if self._live is not None:
                self._live.update(self._table())
            elif res is not None:
                mark = {"ok": "ok   ", "warn": "WARN ", "fault": "FAULT", "run": ""}[_mark(res)]
                self.console.print(f"  {mark} {step.label:<19} {step.device:<16} {res.detail}", markup=False)

    def _table(self):
        from rich.table import Table

        t = Table(title=f"Powering up {self.kit_name}", show_header=False, box=None, pad_edge=False)
        for step, res in self._rows.values():
            t.add_row(_MARK[_mark(res)], step.label, step.device, res.detail if res else "checking…")
        return t

    def verdict(self, report: Report) -> None:
        c = self.console
        if self.live:
            c.print(f"\n{self.kit_name}: {_VERDICT[report.status]}  ({report.took_s:.1f} s)")
        else:
            c.print(f"{self.kit_name}: {report.status.upper().replace('_', ' ')} ({report.took_s:.1f} s)", markup=False)
        for p in report.problems:
            tag = "fault  " if p.severity == "fault" else "warning"
            c.print(f"  {tag} {p}", markup=False)


class LogView:
    """KitView's interface for the daemon: the same steps and verdict, to the log (journald)."""

    def __init__(self, kit_name: str, logger):
        self.kit_name, self.log = kit_name, logger

    def __enter__(self) -> "LogView":
        self.log.info("self-test of %s", self.kit_name)
        return self

    def __exit__(self, *exc) -> None:
        pass

    def progress(self, step: Step, res: StepResult | None) -> None:
        if res is not None:
            self.log.info("  %-5s %s %s: %s", _mark(res), step.label, step.device, res.detail)

    def verdict(self, report: Report) -> None:
        self.log.info("%s: %s (%.1f s)", self.kit_name, report.status.upper(), report.took_s)
        for p in report.problems:
            (self.log.error if p.severity == "fault" else self.log.warning)("  %s", p)
