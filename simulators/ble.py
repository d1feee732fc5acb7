"""BLE peripherals in process, reached through bleak's own ``backend=`` hook.

``BleakClient(address, backend=radio.backend)`` gives a client whose connect, service
discovery, notifications and writes go to a :class:`SimulatedPeripheral` registered on a
:class:`SimulatedRadio` at that address. The driver under test is the real one, unchanged:
the only difference from hardware is the ``backend`` its caller passes. Nothing in bleak is
patched; another client in the same process still talks to the real stack.

A peripheral is a GATT table (services and characteristics by UUID) plus behaviour that a
subclass gives in :meth:`SimulatedPeripheral.on_write`. Notifications go out in pieces of at
most ``notify_chunk`` bytes (20 = ATT_MTU 23 - 3, what real JBD modules send), each one
delivered later on the client's event loop, as a radio would. Test controls:

- ``vanish()``: the device drops off the air: connected clients see an unsolicited
  disconnect (bleak's ``disconnected_callback``), writes fail, new connects fail with
  ``BleakDeviceNotFoundError``; ``come_back()`` undoes it.
- ``connect_delay``: seconds a connect takes (longer than the driver's timeout: a hang).
- ``writes``/``notifications``: what went over the air, in order.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakDeviceNotFoundError, BleakError
from bleak.uuids import normalize_uuid_str

ATT_MTU = 23


@dataclass(frozen=True)
class CharSpec:
    uuid: str
    properties: tuple[str, ...]


@dataclass(frozen=True)
class ServiceSpec:
    uuid: str
    characteristics: tuple[CharSpec, ...]


def service(uuid: str, *chars: tuple[str, Iterable[str]]) -> ServiceSpec:
    """``service("ff00", ("ff01", ["notify"]), ("ff02", ["write-without-response"]))``."""
    return ServiceSpec(normalize_uuid_str(uuid),
                       tuple(CharSpec(normalize_uuid_str(u), tuple(p)) for u, p in chars))


@dataclass
class _Subscription:
    client: "SimulatedBleakClient"
    callback: Callable[[bytearray], None]


class SimulatedPeripheral:
    """A GATT server with test controls; subclasses decide what writes do."""

    notify_chunk = ATT_MTU - 3

    def __init__(self, address: str, name: str, services: Iterable[ServiceSpec]) -> None:
        self.address = address.upper()
        self.name = name
        self.services = tuple(services)
        self.in_range = True
        self.connect_delay = 0.0
        self.connects = 0
        self.failed_connects = 0
        self.writes: list[tuple[str, bytes]] = []
        self.notifications: list[tuple[str, bytes]] = []  # each piece as it went out
        self._lock = threading.Lock()
        self._clients: list[SimulatedBleakClient] = []
        self._subs: dict[str, list[_Subscription]] = {}

    # -- what subclasses override -------------------------------------------------------------

    def on_write(self, char_uuid: str, data: bytes) -> None:
        """A central wrote ``data`` to ``char_uuid``."""

    def on_read(self, char_uuid: str) -> bytes:
        return b""

    def on_connect(self) -> None:
        """A new connection (e.g. a write-only lamp keeps its state; a BMS resets nothing)."""

    # -- test controls -------------------------------------------------------------------------

    def vanish(self) -> None:
        """Out of range or switched off: live links drop, new connects fail until come_back()."""
        with self._lock:
            self.in_range = False
            clients, self._clients = self._clients, []
            self._subs.clear()
        for client in clients:
            client._link_dropped()

    def come_back(self) -> None:
        self.in_range = True

    @property
    def connected(self) -> bool:
        return bool(self._clients)

    def char_uuids(self) -> set[str]:
        return {c.uuid for s in self.services for c in s.characteristics}

    # -- the air between peripheral and clients ------------------------------------------------

    def notify(self, char_uuid: str, data: bytes) -> None:
        """Send ``data`` as notifications on ``char_uuid``, split into ``notify_chunk`` pieces."""
        uuid = normalize_uuid_str(char_uuid)
        size = max(1, self.notify_chunk)
        pieces = [bytes(data[k : k + size]) for k in range(0, len(data), size)] or [b""]
        with self._lock:
            subs = list(self._subs.get(uuid, ()))
        for piece in pieces:
            self.notifications.append((uuid, piece))
            for sub in subs:
                sub.client._deliver(sub.callback, piece)

    def _attach(self, client: "SimulatedBleakClient") -> None:
        with self._lock:
            self._clients.append(client)
            self.connects += 1
        self.on_connect()

    def _detach(self, client: "SimulatedBleakClient") -> None:
        with self._lock:
            if client in self._clients:
                self._clients.remove(client)
            for subs in self._subs.values():
                subs[:] = [s for s in subs if s.client is not client]

    def _subscribe(self, client: "SimulatedBleakClient", uuid: str, callback: Callable[[bytearray], None]) -> None:
        with self._lock:
            self._subs.setdefault(uuid, []).append(_Subscription(client, callback))

    def _unsubscribe(self, client: "SimulatedBleakClient", uuid: str) -> None:
        with self._lock:
            self._subs[uuid] = [s for s in self._subs.get(uuid, []) if s.client is not client]

    def _write(self, uuid: str, data: bytes) -> None:
        self.writes.append((uuid, data))
        self.on_write(uuid, data)


class SimulatedRadio:
    """The peripherals in range of this process, by address; ``backend`` is what bleak takes."""

    def __init__(self, *peripherals: SimulatedPeripheral) -> None:
        self.peripherals: dict[str, SimulatedPeripheral] = {}
        for p in peripherals:
            self.add(p)
        # A class per radio, so two radios (two tests) never share devices.
        self.backend: type[SimulatedBleakClient] = type(
            "SimulatedBleakClient", (SimulatedBleakClient,), {"radio": self})

    def add(self, peripheral: SimulatedPeripheral) -> SimulatedPeripheral:
        self.peripherals[peripheral.address] = peripheral
        return peripheral

    def find(self, address: str) -> SimulatedPeripheral | None:
        return self.peripherals.get(address.upper())


class SimulatedBleakClient(BaseBleakClient):
    """bleak's backend interface over a :class:`SimulatedRadio` (bound by ``radio.backend``)."""

    radio: SimulatedRadio  # set on the per-radio subclass

    def __init__(self, address_or_ble_device: BLEDevice | str, **kwargs: Any) -> None:
        super().__init__(
            address_or_ble_device,
            disconnected_callback=kwargs.pop("disconnected_callback", None),
            timeout=kwargs.pop("timeout", 10.0),
        )
        self._peripheral: SimulatedPeripheral | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected = False

    @property
    def name(self) -> str:
        p = self.radio.find(self.address)
        return p.name if p else self.address.replace(":", "-")

    @property
    def mtu_size(self) -> int:
        return ATT_MTU

    @property
    def is_connected(self) -> bool:
        return self._connected

    async def connect(self, pair: bool = False, **kwargs: Any) -> None:
        peripheral = self.radio.find(self.address)
        if peripheral is not None and peripheral.connect_delay:
            await asyncio.sleep(peripheral.connect_delay)
        if peripheral is None or not peripheral.in_range:
            if peripheral is not None:
                peripheral.failed_connects += 1
            # What bleak raises when a scan for the address finds nothing.
            raise BleakDeviceNotFoundError(self.address, f"Device with address {self.address} was not found.")
        self._loop = asyncio.get_running_loop()
        self.services = _service_collection(peripheral.services)
        self._peripheral = peripheral
        self._connected = True
        peripheral._attach(self)

    async def disconnect(self) -> None:
        peripheral, self._peripheral = self._peripheral, None
        self._connected = False
        if peripheral is not None:
            peripheral._detach(self)

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        return None

    async def unpair(self) -> None:
        return None

    def _require(self) -> SimulatedPeripheral:
        if not self._connected or self._peripheral is None:
            raise BleakError("Not connected")
        return self._peripheral

    async def read_gatt_char(self, characteristic: BleakGATTCharacteristic, **kwargs: Any) -> bytearray:
        return bytearray(self._require().on_read(characteristic.uuid))

    async def read_gatt_descriptor(self, descriptor: BleakGATTDescriptor, **kwargs: Any) -> bytearray:
        self._require()
        return bytearray()

    async def write_gatt_char(self, characteristic: BleakGATTCharacteristic, data: Any, response: bool) -> None:
        peripheral = self._require()
        if response:
            await asyncio.sleep(0)  # a write request waits for the peripheral's response
        peripheral._write(characteristic.uuid, bytes(data))

    async def write_gatt_descriptor(self, descriptor: BleakGATTDescriptor, data: Any) -> None:
        self._require()

    async def start_notify(self, characteristic: BleakGATTCharacteristic, callback: Callable[[bytearray], None],
                           **kwargs: Any) -> None:
        if "notify" not in characteristic.properties and "indicate" not in characteristic.properties:
            raise BleakError(f"characteristic {characteristic.uuid} does not notify")
        self._require()._subscribe(self, characteristic.uuid, callback)

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        self._require()._unsubscribe(self, characteristic.uuid)

    # -- called by the peripheral, possibly from another thread --------------------------------

    def _deliver(self, callback: Callable[[bytearray], None], piece: bytes) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return

        def run() -> None:
            if self._connected:
                callback(bytearray(piece))

        loop.call_soon_threadsafe(run)

    def _link_dropped(self) -> None:
        self._connected = False
        self._peripheral = None
        loop, callback = self._loop, self._disconnected_callback
        if loop is not None and not loop.is_closed() and callback is not None:
            loop.call_soon_threadsafe(callback)


def _service_collection(specs: Iterable[ServiceSpec]) -> BleakGATTServiceCollection:
    collection = BleakGATTServiceCollection()
    handle = 1
    for spec in specs:
        svc = BleakGATTService(None, handle, spec.uuid)
        collection.add_service(svc)
        handle += 1
        for char in spec.characteristics:
            c = BleakGATTCharacteristic(None, handle + 1, char.uuid, list(char.properties),
                                        lambda: ATT_MTU - 3, svc)
            collection.add_characteristic(c)
            handle += 2
            if "notify" in char.properties or "indicate" in char.properties:
                collection.add_descriptor(BleakGATTDescriptor(None, handle, normalize_uuid_str("2902"), c))
                handle += 1
    return collection

