"""Pseudo-terminal plumbing for device simulators.

A simulator owns the master side of a pty; the driver under test opens the
slave path through pyserial exactly as it would open /dev/ttyUSB0, so the real
termios/pyserial code path is exercised, not a mock.
"""

from __future__ import annotations

import errno
import os
import select
import threading
import time
import tty


class PtyPair:
    """An open pseudo-terminal pair in raw mode."""

    def __init__(self) -> None:
        self.master_fd, self.slave_fd = os.openpty()
        # Raw mode before anyone writes: the default line discipline would turn
        # the device's \r into \n and echo the host's bytes back to it.
        tty.setraw(self.slave_fd)
        # We keep our own slave fd open for the pair's lifetime: with no slave
        # fd open, reads on the master fail with EIO, which would make the
        # simulator die whenever the driver closes and reopens the port.
        os.set_blocking(self.master_fd, False)
        self.path = os.ttyname(self.slave_fd)
        self.dropped = 0  # bytes lost because nobody read the slave side
        self._closed = False

    def write(self, data: bytes) -> int:
        """Write without blocking; drop what does not fit, as a UART would overrun."""
        sent = 0
        while sent < len(data):
            try:
                sent += os.write(self.master_fd, data[sent:])
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EIO:
                    break
                raise
        self.dropped += len(data) - sent
        return sent

    def read(self, size: int = 4096) -> bytes:
        """Non-blocking read of what the driver sent; b"" if nothing is waiting."""
        try:
            return os.read(self.master_fd, size)
        except (BlockingIOError, InterruptedError):
            return b""
        except OSError as exc:
            if exc.errno == errno.EIO:
                return b""
            raise

    def close(self) -> None:
        """Close both sides; an open driver then sees the device vanish (EIO)."""
        if self._closed:
            return
        self._closed = True
        for fd in (self.master_fd, self.slave_fd):
            try:
                os.close(fd)
            except OSError:
                pass

    @property
    def closed(self) -> bool:
        return self._closed


class PtySimulator:
    """Base for a device simulated on a pty, run by one background thread.

    Subclasses override ``on_receive`` (bytes the driver sent) and ``on_tick``
    (periodic work; return the number of seconds until the next tick, or None
    to wait for input only). Both run on the simulator thread.
    """

    name = "pty-simulator"

    def __init__(self) -> None:
        self.pty = PtyPair()
        self._thread: threading.Thread | None = None
        # A self-pipe wakes the select() at once, so stop() never waits for a
        # poll interval to expire.
        self._wake_r, self._wake_w = os.pipe()
        self._stopping = threading.Event()
        self.error: BaseException | None = None

    @property
    def path(self) -> str:
        """The slave device path to hand to the driver (e.g. /dev/pts/7)."""
        return self.pty.path

    def start(self) -> PtySimulator:
        if self._thread is not None:
            raise RuntimeError(f"{self.name} already started")
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread and close the pty. Safe to call twice or before start()."""
        self._stopping.set()
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError(f"{self.name} thread did not stop within {timeout}s")
        self.pty.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1

    def __enter__(self) -> PtySimulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def on_receive(self, data: bytes) -> None:
        """Bytes the driver wrote to the port."""

    def on_tick(self, now: float) -> float | None:
        """Periodic work; return seconds until the next call, or None for none."""
        return None

    def _run(self) -> None:
        try:
            next_tick: float | None = time.monotonic()
            while not self._stopping.is_set():
                now = time.monotonic()
                if next_tick is not None and now >= next_tick:
                    delay = self.on_tick(now)
                    next_tick = None if delay is None else now + delay
                wait = None if next_tick is None else max(0.0, next_tick - time.monotonic())
                readable, _, _ = select.select([self.pty.master_fd, self._wake_r], [], [], wait)
                if self._wake_r in readable:
                    break
                if self.pty.master_fd in readable:
                    data = self.pty.read()
                    if data:
                        self.on_receive(data)
        except BaseException as exc:  # surfaced to tests via .error instead of dying silently
            self.error = exc
