"""What the printers' serial ports share: the errors a vanished device raises, and a close that
survives one."""

from __future__ import annotations

import serial

from agent.errors import DriverTimeout, PrinterError

# What a port raises when its device is gone: pyserial wraps most of it, but not
# termios calls (tcflush on an unplugged USB-serial adapter or a closed pty).
PORT_ERRORS: tuple[type[BaseException], ...] = (serial.SerialException, OSError)
try:
    import termios

    PORT_ERRORS += (termios.error,)
except ImportError:  # pragma: no cover - not POSIX
    pass


def write_port(port, data: bytes, what: str) -> None:
    """Send ``data`` and flush it; a port that holds flow control past its write timeout is a
    DriverTimeout, a failed one a PrinterError, each naming ``what``."""
    try:
        port.write(data)
        flush = getattr(port, "flush", None)
        if flush is not None:
            flush()
    except serial.SerialTimeoutException as exc:
        raise DriverTimeout(f"{what} did not accept data: {exc}") from exc
    except PORT_ERRORS as exc:
        raise PrinterError(f"{what} port failed: {exc}") from exc


def close_port(port: object) -> None:
    """Release ``port`` if it can be closed; a vanished device leaves nothing to release."""
    close = getattr(port, "close", None)
    if close is not None:
        try:
            close()
        except PORT_ERRORS:
            pass
