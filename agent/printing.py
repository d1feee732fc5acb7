"""The kit's print queue: every job survives a restart and prints once the printer can.

Jobs are receipt descriptions (:meth:`Receipt.to_dict`) in a SQLite file (WAL,
``synchronous=FULL``, like the outbox), each with an id and a state:

- ``queued``: waiting (also after a failed attempt that may be retried);
- ``printing``: being sent now;
- ``done``: the printer took the bytes and still answered afterwards;
- ``failed``: can never print (its content does not encode); ``error`` says why.

One worker thread owns the printer. It sends jobs oldest first, one at a time,
and only through :meth:`Printer.print_job`, which refuses to send while paper is
out, the cover is open or the printer is in error. While the printer cannot
print, or does not answer, or its port vanished, the job stays queued and the
worker retries with exponential backoff (capped at ``max_backoff_s``), reopening
the port when the link failed; it resumes by itself once status is good again.
:meth:`PrintQueue.kick` retries at once (a crew member just loaded a roll).

Why a thread, not asyncio: pyserial blocks, and a single long-lived thread that
owns the port is simpler than hopping through ``asyncio.to_thread`` per call.
``enqueue``/``counts``/``job`` are quick SQLite calls, safe from any thread or
from the event loop.

Delivery is **at least once**. A job can print twice only if the bytes reached
the printer and then the agent did not record ``done``: the process died between
``write`` and the commit, or the printer stopped answering right after the job
went out (the job may well have printed). Such jobs are back to ``queued`` on the
next start or attempt. A job is never sent into a printer reporting paper out or
cover open, so loading a roll never prints a job twice.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

from agent.drivers.printer import InvalidPrintJob, Printer, PrinterNotReady, PrinterStatus
from agent.drivers.receipt import Receipt
from agent.errors import DriverError

log = logging.getLogger(__name__)

JobState = Literal["queued", "printing", "done", "failed"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS print_jobs (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    job        TEXT    NOT NULL,
    state      TEXT    NOT NULL DEFAULT 'queued',
    attempts   INTEGER NOT NULL DEFAULT 0,
    error      TEXT,
    created_ms INTEGER NOT NULL,
    done_ms    INTEGER
);
CREATE INDEX IF NOT EXISTS print_jobs_state ON print_jobs (state, id);
"""


@dataclass(frozen=True)
class PrintJobRecord:
    id: int
    state: JobState
    attempts: int
    error: str | None  # why it failed, or why the last attempt did not print


@dataclass(frozen=True)
class QueueCounts:
    queued: int  # waiting, including one being sent
    printed: int
    failed: int


class PrintQueue:
    """A persistent FIFO of print jobs and the worker that prints them.

    ``open_printer`` is called by the worker whenever it has no printer (at
    start and after a link failure); it may raise a DriverError, which counts
    as "not answering" and is retried.
    """

    def __init__(self, path: str | Path, open_printer: Callable[[], Printer], *,
                 min_backoff_s: float = 0.5, max_backoff_s: float = 10.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.open_printer = open_printer
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.last_status: PrinterStatus | None = None  # what the printer last said (None: not answering)
        self.last_error: DriverError | None = None  # why the last attempt did not print
        self._lock = threading.Lock()  # the database
        self._printer_lock = threading.Lock()  # the port: one job or one status query at a time
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        # A job "printing" when the agent stopped may or may not have printed:
        # print it again (at least once, see the module docstring).
        self._db.execute("UPDATE print_jobs SET state = 'queued' WHERE state = 'printing'")
        self._printer: Printer | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- API for the agent (any thread)

    def enqueue(self, job: Receipt | dict) -> int:
        """Store a job (committed to disk before returning); returns its id."""
        description = job.to_dict() if isinstance(job, Receipt) else job
        text = json.dumps(description)
        with self._lock:
            cur = self._db.execute("INSERT INTO print_jobs (job, created_ms) VALUES (?, ?)",
                                   (text, int(time.time() * 1000)))
        self._wake.set()
        assert cur.lastrowid is not None
        return cur.lastrowid

    def job(self, job_id: int) -> PrintJobRecord | None:
        with self._lock:
            row = self._db.execute("SELECT id, state, attempts, error FROM print_jobs WHERE id = ?",
                                   (job_id,)).fetchone()
        return PrintJobRecord(*row) if row else None

    def counts(self) -> QueueCounts:
        with self._lock:
            rows = dict(self._db.execute("SELECT state, count(*) FROM print_jobs GROUP BY state").fetchall())
        return QueueCounts(queued=rows.get("queued", 0) + rows.get("printing", 0),
                           printed=rows.get("done", 0), failed=rows.get("failed", 0))

    def printer_status(self) -> PrinterStatus:
        """Ask the printer now, over the queue's own connection; raises DriverError like ``Printer.status``.

        For telemetry and self-tests while the queue runs: a serial port must have
        one owner, or a status reply can be read by the wrong party.
        """
        with self._printer_lock:
            try:
                status = self._connect().status()
            except DriverError:
                self._drop_printer()
                self.last_status = None
                raise
            self.last_status = status
            return status

    def kick(self) -> None:
        """Retry now instead of waiting out the backoff (e.g. paper was just loaded)."""
        self._wake.set()

    # ---- the worker

    def start(self) -> PrintQueue:
        if self._thread is not None:
            raise RuntimeError("print queue already started")
        self._thread = threading.Thread(target=self._run, name="print-queue", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the worker (after the job in hand, if any), close the printer and the file. Idempotent."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError(f"print queue worker did not stop within {timeout}s")
        with self._printer_lock:
            self._drop_printer()
        with self._lock:
            self._db.close()

    def __enter__(self) -> PrintQueue:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self) -> None:
        backoff = self.min_backoff_s
        while not self._stopping.is_set():
            try:
                progressed = self.print_next()
            except Exception:  # noqa: BLE001 - a bug must not kill the worker and strand the queue
                log.exception("print queue worker")
                progressed = False
            if progressed is None:  # queue empty: sleep until a job arrives
                self._wake.wait()
                self._wake.clear()
                backoff = self.min_backoff_s
            elif progressed:
                backoff = self.min_backoff_s
            else:
                self._wake.wait(backoff)
                self._wake.clear()
                backoff = min(backoff * 2, self.max_backoff_s)

    def print_next(self) -> bool | None:
        """One attempt at the oldest queued job: True printed/failed, False retry later, None nothing queued."""
        with self._lock:
            row = self._db.execute(
                "SELECT id, job FROM print_jobs WHERE state = 'queued' ORDER BY id LIMIT 1").fetchone()
        if row is None:
            return None
        job_id, text = row
        try:
            data = Receipt.from_dict(json.loads(text)).encode()
        except (InvalidPrintJob, ValueError) as exc:
            self._finish(job_id, "failed", f"{type(exc).__name__}: {exc}")
            return True
        with self._printer_lock:
            try:
                printer = self._connect()
                self._set(job_id, "printing")
                printer.print_job(data)
            except PrinterNotReady as exc:
                self.last_status = exc.status
                self._retry_later(job_id, exc)
                return False
            except DriverError as exc:  # not answering, port vanished, corrupt reply: reopen next time
                self.last_status = None
                self._drop_printer()
                self._retry_later(job_id, exc)
                return False
        self._finish(job_id, "done", None)
        return True

    def _connect(self) -> Printer:
        if self._printer is None:
            self._printer = self.open_printer()
        return self._printer

    def _drop_printer(self) -> None:
        if self._printer is not None:
            try:
                self._printer.close()
            except DriverError:
                pass
            self._printer = None

    def _retry_later(self, job_id: int, exc: DriverError | None) -> None:
        self.last_error = exc
        with self._lock:
            self._db.execute("UPDATE print_jobs SET state = 'queued', attempts = attempts + 1, error = ?"
                             " WHERE id = ?", (str(exc)[:200] if exc else None, job_id))
        log.info("print job %d waits: %s", job_id, exc)

    def _set(self, job_id: int, state: JobState) -> None:
        with self._lock:
            self._db.execute("UPDATE print_jobs SET state = ? WHERE id = ?", (state, job_id))

    def _finish(self, job_id: int, state: JobState, error: str | None) -> None:
        if state == "done":
            self.last_error = None
        with self._lock:
            self._db.execute(
                "UPDATE print_jobs SET state = ?, error = ?, attempts = attempts + 1, done_ms = ? WHERE id = ?",
                (state, error, int(time.time() * 1000), job_id))
