"""The agent's one error hierarchy.

Callers catch the narrowest class they can act on: the supervisor treats any
``DriverError`` as "this device is unhealthy", while ``DriverTimeout`` is also
a ``TimeoutError`` so generic retry helpers recognise it without importing us.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""


class DriverError(AgentError):
    """A hardware driver could not talk to its device or got nonsense back."""


class PowerBankError(DriverError):
    """The battery monitor / charge controller link failed (e.g. the port vanished)."""


class PrinterError(DriverError):
    """The receipt printer link failed or the printer replied with bytes that break its spec."""


class DriverTimeout(DriverError, TimeoutError):
    """The device stayed silent: usually switched off, unplugged or at the wrong baud rate."""
