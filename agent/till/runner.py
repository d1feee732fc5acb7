"""The till as the agent daemon runs it: the Till on the agent's data folder, its sales through the
agent's link, its time from the kit's clock, the catalog from the agent's config, the scanners' scans.

``POPKIT_TILL`` (agent/settings.py): ``auto`` (the default) runs the till on a kit whose manifest has a
printer (a kit that can hand out a receipt is a kit that may sell), ``on`` on any kit, ``off`` never.
Receipts go to ``POPKIT_TILL_PRINTER``, else to the manifest's first printer.
"""

from __future__ import annotations

from pathlib import Path

from agent.errors import AgentError
from agent.till.intake import CatalogIntake
from agent.till.scans import TillScans
from agent.till.service import Clock, Till
from agent.till.uplink import LinkUplink


def till_wanted(manifest, settings) -> bool:
    if settings.till == "auto":
        return any(s.role == "printer" for s in manifest.devices)
    return settings.till == "on"


def receipt_printer(manifest, settings) -> str | None:
    """The printer of the till's receipts; a POPKIT_TILL_PRINTER that is not one of the kit's printers
    is refused at start, naming the ones there are."""
    printers = [s.id for s in manifest.devices if s.role == "printer"]
    if not settings.till_printer:
        return printers[0] if printers else None
    if settings.till_printer not in printers:
        raise AgentError(f"POPKIT_TILL_PRINTER={settings.till_printer}: not a printer of kit {manifest.id} "
                         f"(its printers: {', '.join(printers) or 'none'})")
    return settings.till_printer


def kit_clock(service) -> Clock:
    """The till's time from the kit's clock (agent/kitclock.py): its time, and whether it is unset."""
    def read() -> tuple[int, bool]:
        reading = service.clock.read()
        return reading.ts, reading.state == "unset"
    return read


class TillRunner:
    def __init__(self, manifest, settings, data: Path, link, clock_service=None):
        self.printer_id = receipt_printer(manifest, settings)
        self.till = Till(Path(data) / f"{manifest.id}-till.db", manifest.id, manifest.name,
                         uplink=LinkUplink(link, manifest.agent),
                         clock=kit_clock(clock_service) if clock_service is not None else None)
        self.intake = CatalogIntake(self.till, link, manifest.agent)
        self.scans = TillScans(manifest.id, settings.mqtt_url, self.till)

    def start(self) -> "TillRunner":
        self.till.start()
        self.scans.start()
        return self

    def attach_queues(self, queues: dict) -> None:
        """The agent's print queues are up: the till's printer takes its receipts."""
        if self.printer_id in queues:
            self.till.attach_printer(queues[self.printer_id])

    def stop(self) -> None:
        self.scans.stop()
        self.till.close()


def control_request(till: Till, req: dict):
    """One till request over the agent's local control channel (``{"op": "till", "do": ...}``), for
    the Pi's console and the tests: the same calls as the page, answered as JSON. TillError and
    ValueError travel back as the channel's error line."""
    do, station = req.get("do"), str(req.get("station") or "main")
    if do == "cart":
        return till.cart(station)
    if do == "add":
        res = till.add(station, str(req.get("code", "")), int(req.get("qty", 1)))
        return {"ok": res.ok, "sku": res.sku, "qty": res.qty, "reason": res.reason}
    if do == "set_qty":
        till.set_qty(station, str(req.get("sku", "")), int(req.get("qty", 0)))
        return till.cart(station)
    if do == "clear":
        till.clear(station)
        return till.cart(station)
    if do == "pay":
        return till.pay(station, str(req.get("payment", "")), str(req.get("by", ""))).model_dump(mode="json",
                                                                                              exclude_none=True)
    if do == "refund":
        lines = req.get("lines")
        return till.refund(str(req.get("order", "")), None if lines is None else [(str(s), int(q)) for s, q in lines],
                           str(req.get("reason", "")), str(req.get("by", "")), kind=str(req.get("kind", "refund")),
                           restock=bool(req.get("restock", True))).model_dump(mode="json", exclude_none=True)
    if do == "orders":
        return till.orders(int(req.get("limit", 50)))
    if do == "order":
        return till.order(str(req.get("order", "")))
    if do == "stock":
        return till.stock()
    if do == "pending":
        return till.pending()
    if do == "catalog":
        return till.catalog_info()
    raise ValueError(f"the till does not know {do!r} (cart, add, set_qty, clear, pay, refund, orders, order, "
                     "stock, pending, catalog)")
