"""One BLE peripheral through bleak: connect, subscribe, write, and survive the link dropping.

The JBD battery monitor and the BLE lamps share this. Everything a caller can see going
wrong comes out as a :class:`BleError` (a ``DriverError``): the daemon's loop already turns
those into fault events and carries on. Nothing bleak or the OS raises escapes as itself.

The link is down until a call needs it; then it connects (bounded by ``connect_timeout``).
After a failure it waits before trying again, doubling the wait up to ``backoff_max``
(``mqtt_as``'s habit), so a pack that is switched off is not hammered every poll while the
caller still gets an immediate, clear answer ("not reachable, next try in 8 s"). State
changes (up/down) go to ``on_state`` so the caller can publish them as events.

bleak is imported when a link first connects, never at import time, so the agent imports on
a laptop with no BLE stack. ``backend`` is bleak's own hook (``BleakClient(backend=...)``):
``None`` means the platform's real stack; the simulators pass their in-process backend. The
driver code is the same either way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from agent.errors import DriverError, DriverTimeout

log = logging.getLogger("popkit.agent.ble")


def uuid16(short: int) -> str:
    """The full 128-bit form of a 16-bit Bluetooth SIG UUID, as bleak spells it."""
    return f"0000{short:04x}-0000-1000-8000-00805f9b34fb"


class BleError(DriverError):
    """A BLE peripheral could not be reached or used."""


class BleLinkLost(BleError):
    """Not connected: out of range, switched off, or the link dropped mid-conversation."""


class BleTimeout(BleError, DriverTimeout):
    """Connected, but the peripheral did not answer in time."""


class BleUnavailable(BleError):
    """No BLE stack on this machine (bleak missing); pick a simulator explicitly instead."""


@dataclass
class Backoff:
    """Wait between reconnect attempts: ``first`` seconds, doubling up to ``most``."""

    first: float = 1.0
    most: float = 60.0

    def after(self, failures: int) -> float:
        if failures <= 0:
            return 0.0
        return min(self.most, self.first * 2 ** (failures - 1))


NotifyHandler = Callable[[bytes], None]
StateHandler = Callable[[bool, str], None]


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class BleLink:
    """A connection to one peripheral at ``address`` that reconnects when asked to work.

    ``notify`` maps characteristic UUIDs to handlers; they are subscribed again after every
    reconnect, since a new connection starts with notifications off.
    """

    def __init__(
        self,
        address: str,
        *,
        backend: Any = None,
        notify: dict[str, NotifyHandler] | None = None,
        connect_timeout: float = 10.0,
        backoff: Backoff | None = None,
        on_state: StateHandler | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.address = address
        self.backend = backend
        self.connect_timeout = connect_timeout
        self.backoff = backoff if backoff is not None else Backoff()
        self.on_state = on_state
        self._notify = dict(notify or {})
        self._clock = clock
        self._client: Any = None
        self._lock = asyncio.Lock()
        self._up = False
        self._lost_event: asyncio.Event | None = None
        self.failures = 0  # consecutive failed connects, drives the backoff
        self.next_attempt = 0.0  # clock time before which no connect is tried
        self.connects = 0
        self.losses = 0  # times an established link went down unasked
        self.last_error: str | None = None

    @property
    def up(self) -> bool:
        return self._up and self._client is not None and self._client.is_connected

    def lost_event(self) -> asyncio.Event:
        """Set while the link is down; a waiter uses it to stop waiting for a reply that cannot come."""
        if self._lost_event is None:
            self._lost_event = asyncio.Event()
            if not self._up:
                self._lost_event.set()
        return self._lost_event

    def _set_state(self, up: bool, why: str) -> None:
        changed = up != self._up
        self._up = up
        event = self.lost_event()
        if up:
            event.clear()
        else:
            event.set()
        if changed:
            log.info("%s: BLE link %s (%s)", self.address, "up" if up else "down", why)
            if self.on_state is not None:
                try:
                    self.on_state(up, why)
                except Exception:  # a buggy listener must not take the link down with it
                    log.exception("%s: link state handler failed", self.address)

    def _on_disconnect(self, client: Any) -> None:
        # A late callback from a client we already replaced says nothing about the current link.
        if client is self._client and self._up:
            self.losses += 1
            self.last_error = "link dropped"
            self._set_state(False, "link dropped")

    def _make_client(self) -> Any:
        try:
            from bleak import BleakClient
        except ImportError as exc:
            raise BleUnavailable(f"bleak is not installed, cannot reach {self.address} over BLE") from exc
        return BleakClient(
            self.address,
            disconnected_callback=self._on_disconnect,
            timeout=self.connect_timeout,
            backend=self.backend,
        )

    async def ensure_up(self) -> None:
        """Connect and subscribe if not connected; raise BleLinkLost if that is not possible now."""
        if self.up:
            return
        async with self._lock:
            if self.up:
                return
            if self._up:  # dropped, and bleak's callback has not run yet
                self.losses += 1
                self.last_error = "link dropped"
                self._set_state(False, "link dropped")
            wait = self.next_attempt - self._clock()
            if wait > 0:
                raise BleLinkLost(
                    f"{self.address} not reachable over BLE ({self.last_error}); next try in {wait:.0f}s"
                )
            await self._connect()

    async def _connect(self) -> None:
        await self._drop_client()
        try:
            client = self._make_client()
            self._client = client
            async with asyncio.timeout(self.connect_timeout):
                await client.connect()
                for uuid, handler in self._notify.items():
                    await client.start_notify(uuid, self._wrap(handler))
        except BleUnavailable:
            self._client = None
            raise
        except Exception as exc:  # bleak, D-Bus, OS and timeout errors alike: the link is not there
            reason = "no answer within %gs" % self.connect_timeout if isinstance(exc, TimeoutError) else _describe(exc)
            self._fail(reason)
            await self._drop_client()
            raise BleLinkLost(f"{self.address} not reachable over BLE: {reason}") from exc
        self.failures = 0
        self.next_attempt = 0.0
        self.connects += 1
        self.last_error = None
        self._set_state(True, "connected")

    def _fail(self, reason: str) -> None:
        self.failures += 1
        self.last_error = reason
        self.next_attempt = self._clock() + self.backoff.after(self.failures)
        self._set_state(False, reason)

    @staticmethod
    def _wrap(handler: NotifyHandler) -> Callable[[Any, bytearray], None]:
        def on_notify(_char: Any, data: bytearray) -> None:
            handler(bytes(data))

        return on_notify

    async def write(self, uuid: str, data: bytes, *, response: bool = False) -> None:
        """Write ``data`` to characteristic ``uuid``, connecting first if needed."""
        await self.ensure_up()
        try:
            async with asyncio.timeout(self.connect_timeout):
                await self._client.write_gatt_char(uuid, data, response=response)
        except Exception as exc:
            await self.mark_lost(f"write failed: {_describe(exc)}")
            raise BleLinkLost(f"{self.address}: write failed, link dropped ({_describe(exc)})") from exc

    def writes_with_response(self, uuid: str) -> bool:
        """Whether ``uuid`` takes acknowledged writes (the peripheral confirms each one)."""
        try:
            char = self._client.services.get_characteristic(uuid)
        except Exception:
            return False
        return char is not None and "write" in char.properties

    async def mark_lost(self, reason: str) -> None:
        """The conversation broke (e.g. a write failed): drop the client so the next call reconnects."""
        if self._up:
            self.losses += 1
        self.last_error = reason
        self._set_state(False, reason)
        await self._drop_client()

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            async with asyncio.timeout(2.0):
                await client.disconnect()
        except Exception:  # already gone; nothing to tidy
            pass

    async def close(self) -> None:
        """Disconnect on purpose (not counted as a loss)."""
        self._up = False
        self.lost_event().set()
        await self._drop_client()
