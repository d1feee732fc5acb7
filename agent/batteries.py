"""Power banks behind one face: read a sample, self-test it, whatever the monitor is.

Two monitors speak very differently (a Victron shunt streams VE.Direct text over serial; a JBD
BMS answers framed requests over Bluetooth); the daemon and the power-up want the same two
things of both: the contract's battery telemetry fields, and the crew's problems.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from agent.drivers.jbd import EMPTY_SOC  # % under which a pack is a fault, whatever the crew expects
from agent.errors import DriverError
from agent.readiness import Problem, fault, warning

log = logging.getLogger("popkit.agent.batteries")



class VeDirectBattery:
    """A Victron SmartShunt/BMV on a serial port; blocking reads run in a worker thread."""

    def __init__(self, device_id: str, path: str):
        self.device_id, self.path = device_id, path
        self._reader = None
        self._lock = asyncio.Lock()  # telemetry and a self-test may ask at once: one reader of the port

    async def read(self, timeout: float = 3.0) -> dict[str, Any]:
        async with self._lock:
            return await self._read(timeout)

    async def _read(self, timeout: float) -> dict[str, Any]:
        from agent.drivers.vedirect import VEDirectReader

        try:
            if self._reader is None:
                self._reader = await asyncio.to_thread(VEDirectReader.open, self.path)
            r = await asyncio.to_thread(self._reader.read_reading, timeout)
        except DriverError:
            await self.close()  # reopened on the next read: a replugged cable comes back by itself
            raise
        return {"source": "vedirect", "v": r.v, "i": r.i, "p": r.p, "soc": r.soc, "ttg": r.ttg, "alarm": r.alarm}

    async def self_test(self, expect: Any = None) -> tuple[dict | None, list[Problem]]:
        try:
            fields = await self.read()
        except DriverError as exc:
            log.warning("%s: %s", self.device_id, exc)
            return None, [fault(self.device_id, f"battery monitor not answering on {self.path}"[:120],
                                "check the VE.Direct cable and that the shunt is powered")]
        problems = []
        if fields["alarm"]:
            problems.append(fault(self.device_id, f"battery alarm: {fields['alarm'].replace('_', ' ')}",
                                  "charge or swap the pack before opening"))
        soc = fields["soc"]
        min_soc = getattr(expect, "min_soc", None)
        if soc is not None and soc < EMPTY_SOC:
            problems.append(fault(self.device_id, f"battery nearly empty ({soc:.0f} %)", "charge the pack or swap in a full one"))
        elif soc is not None and min_soc is not None and soc < min_soc:
            problems.append(warning(self.device_id, f"battery at {soc:.0f} %, {min_soc:g} % wanted at doors-open",
                                    "charge the pack before doors open or bring a spare"))
        return fields, problems

    async def close(self) -> None:
        if self._reader is not None:
            reader, self._reader = self._reader, None
            await asyncio.to_thread(reader.close)


class JbdBattery:
    """A JBD BMS over Bluetooth (``backend``: bleak's backend class; None for the real stack)."""

    def __init__(self, device_id: str, address: str, backend: Any = None):
        from agent.drivers.jbd import jbd_monitor

        self.device_id = device_id
        self.bms = jbd_monitor(address, backend=backend)

    async def read(self) -> dict[str, Any]:
        return (await self.bms.read()).telemetry_fields()

    async def self_test(self, expect: Any = None) -> tuple[dict | None, list[Problem]]:
        reading, problems = await self.bms.check(self.device_id, expect)  # never raises
        return (reading.telemetry_fields() if reading is not None else None), problems

    async def close(self) -> None:
        await self.bms.close()
