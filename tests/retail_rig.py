"""A stall as it stands in the field, for the retail end-to-end test and ``python -m bench.retail``.

* Two real Mosquittos bridged as ``popkit kit provision`` makes them (tests/bridged.py): the kit
  broker with its TLS, accounts and ACL, the fleet broker with the fleet on it.
* The fleet's ingest and API in this process on a real database (SQLite file or PostgreSQL).
* The agent as its own process (``popkit agent run``, no ``--simulate``): its till, its till page on
  a local port, its receipts on the kit's printer, which is the ESC/POS simulator on a pty owned by
  this process (the manifest's ``serial:`` path), so every byte it prints can be counted here.
* One scanner in till mode running the real firmware from its ROMFS image in the unix port, logged in
  to the kit broker with its provisioned account, its QR module simulated (simulators/scanner.py).
* The catalog imported at the fleet through its API, as ops do, and reaching the till as the agent's
  retained config across the bridge.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from agent import control
from agent.till.logins import Logins, logins_path
from kits.retail.sku import rcn13
from simulators.printer import PrinterModel, PrinterSimulator
from simulators.scanner import ScannerSim
from tests.bridged import Bridged, start_bridged
from tests.conftest import Fleet, start_fleet, wait_until

KIT, AGENT, PRINTER, SCANNER, EVENT = "stall", "stall-agent", "stall-printer", "stall-scanner", "STALL26"
STICKERS, POSTER, TEE, TOTE = rcn13(1), rcn13(2), "TEE-BLK-M", "TOTE-NAT"
SCANNED = (STICKERS, POSTER)  # printed labels the crew scans at the till-mode scanner
# The poster is carried short on purpose: stalls sell past zero (issue 19), and the fleet must agree.
CATALOG_CSV = f"""sku,name,price,tax_rate,stock,kit,event,currency,colour,size
{STICKERS},"Sticker pack, 5 pcs",4.00,7.5,2000,{KIT},{EVENT},EUR,,
{POSTER},Risograph poster A3,18.50,20,25,{KIT},{EVENT},EUR,,
{TEE},Stall tee,25.00,20,2000,{KIT},{EVENT},EUR,black,M
{TOTE},Tote bag,12.00,20,2000,{KIT},{EVENT},EUR,natural,
"""
CREW = "sam"


def manifest_text(printer_path: str) -> str:
    return f"""
id = "{KIT}"
name = "Stall kit"
agent = "{AGENT}"

[[devices]]
id = "{PRINTER}"
role = "printer"
model = "epson-tm-t20"
bus = "serial:{printer_path}"
telemetry_s = 5

[[devices]]
id = "{SCANNER}"
role = "scanner"
model = "esp32-gm65"
"""


class TimedPrinter(PrinterModel):
    """The ESC/POS printer, noting when each receipt's last byte (its cut) came, by the order id its QR
    carries: ``printed[order_id] = time.monotonic()``."""

    def __init__(self) -> None:
        super().__init__()
        self.printed: dict[str, float] = {}
        self.receipts: list[tuple[str, int, int]] = []  # (order id, first item, item after the cut)
        self._seen = 0  # roll lines looked at so far
        self._qr: str | None = None
        self._start = 0  # index into items where the current receipt began

    def receive(self, data: bytes) -> bytes:
        replies = super().receive(data)
        with self._lock:
            lines = self.roll.lines
            for line in lines[self._seen:]:
                if line.kind == "qr":
                    self._qr = line.data
                elif line.kind == "cut":
                    if self._qr is not None:
                        self.printed[self._qr] = time.monotonic()
                        self.receipts.append((self._qr, self._start, len(self.items)))
                    self._qr, self._start = None, len(self.items)
            self._seen = len(lines)
        return replies

    def receipt_bytes(self, order_id: str) -> bytes:
        """What the printer received for ``order_id``'s receipt, from the reset before it to its cut."""
        with self._lock:
            first, end = next((a, b) for o, a, b in self.receipts if o == order_id)
            return b"".join(item.raw for item in self.items[first:end])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stall:
    """The whole stall (see the module's doc). ``start()`` brings it up to the point where the crew can
    sell: catalog at the till, the page signed in, the scanner in till mode and answered."""

    def __init__(self, work: Path, db_url: str, say=lambda _text: None):
        self.work, self.db_url, self.say = work, db_url, say
        self.printer = TimedPrinter()
        self.sim = PrinterSimulator(self.printer)
        self.data = work / "agent"
        self.net: Bridged | None = None
        self.fleet: Fleet | None = None
        self.agent: subprocess.Popen | None = None
        self.page: httpx.Client | None = None
        self.scanner_uart: ScannerSim | None = None
        self.scanner = None  # tests.device.firmware.Device
        self.confirmed: dict[str, dict] = {}  # order id -> the order as the page's pay returned it
        self._log = None

    # ------------------------------------------------------------ bring-up

    def start(self, rom_image: Path) -> "Stall":
        return self.start_network().start_kit(rom_image)

    def start_network(self) -> "Stall":
        """The printer, both brokers bridged and the fleet: no agent, no scanner yet."""
        self.sim.start()
        self.manifest = self.work / "stall.toml"
        self.manifest.write_text(manifest_text(self.sim.path))
        self.net = start_bridged(self.work, self.manifest)
        self.fleet = start_fleet(self.net.fleet_url, self.db_url, kits=(self.manifest,))
        self.say("brokers bridged, fleet up")
        return self

    def start_kit(self, rom_image: Path) -> "Stall":
        """The agent process with its till, the catalog from the fleet, the page signed in, the scanner."""
        self.passphrase = Logins(logins_path(self.data)).add(CREW)  # as `popkit till login add sam` on the Pi
        self.page_port = free_port()
        self._spawn_agent()
        self._import_catalog()
        self._sign_in()
        self._start_scanner(rom_image)
        return self

    def _spawn_agent(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "POPKIT_TILL_LISTEN": f"127.0.0.1:{self.page_port}"}
        if self._log is None:
            self._log = open(self.work / "agent.log", "ab")
        self.agent = subprocess.Popen(
            [sys.executable, "-m", "popkit.cli", "agent", "run", "--kit", str(self.manifest),
             "--mqtt", self.net.kit_url(AGENT), "--data", str(self.data)],
            stdout=self._log, stderr=subprocess.STDOUT, env=env)
        wait_until(lambda: control.socket_path(self.data).exists(), timeout=30, what="the agent's control channel")
        self.say("agent process up")

    def till(self, **req):
        """One till request over the agent's control channel (as the Pi's console asks)."""
        *_, last = control.request(control.socket_path(self.data), KIT, "till", timeout=20, **req)
        return last["result"]

    def _import_catalog(self) -> None:
        r = self.fleet.api.post(f"/api/v1/kits/{KIT}/catalog", content=CATALOG_CSV.encode(),
                                headers={"content-type": "text/csv"})
        assert r.status_code == 200, r.text
        pushed = r.json()["till"]
        assert pushed["pushed"], pushed

        def arrived() -> bool:
            info = self.till(do="catalog")
            return info["version"] == pushed["version"] and info["products"] == 4 and info["source"] == "fleet"

        wait_until(arrived, timeout=30, what="the fleet's catalog at the till, across the bridge")
        self.say(f"catalog pushed to the till: {r.json()['till']}")

    def _sign_in(self) -> None:
        self.page = httpx.Client(base_url=f"http://127.0.0.1:{self.page_port}", timeout=20)
        wait_until(self._page_up, timeout=30, what="the till page listening")
        r = self.page.post("/till/api/session", json={"name": CREW, "passphrase": self.passphrase})
        assert r.status_code == 200, r.text

    def _page_up(self) -> bool:
        try:
            return self.page.get("/till/api/session").status_code == 401
        except httpx.TransportError:
            return False

    def _start_scanner(self, rom_image: Path) -> None:
        from kits.tickets import EventKey
        from tests.device.firmware import Device
        from tests.device.test_firmware_tls import as_provisioned
        from tests.device.test_scanner_app import BUDGET, write_config

        self.scanner_uart = ScannerSim()
        cfg = write_config(self.work / "scanner.json", self.scanner_uart, self.net.kit_broker.port,
                           self.work / "scanner-flash", [EventKey.generate(EVENT)], kit=KIT, device=SCANNER)
        body = json.loads(cfg.read_text())
        cfg.write_text(json.dumps({**body, "mode": "till", "till": "main"}))
        as_provisioned(cfg, self.net.kit_side, SCANNER, self.net.kit_broker)
        self.scanner = Device.from_rom(rom_image, cfg, budget=BUDGET)
        self.scanner.expect(r"READY", timeout=15)
        self.scanner_uart.wait_connected(1, timeout=10)
        self.scanner.expect(r"MODE till main", timeout=10)
        self._scanner_answered()

    def _scanner_answered(self) -> None:
        """Wait for the first scan that is answered (until the scanner is online and the till subscribed:
        "scan again"); the open order is left empty."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.scan(STICKERS)[0] == "green":
                self.page.delete("/till/api/cart")
                self.say("scanner in till mode answered")
                return
            time.sleep(0.3)
        raise AssertionError("the till-mode scanner was never answered:\n" + "\n".join(self.scanner.lines[-30:]))

    # ------------------------------------------------------------ selling

    def scan(self, code: str) -> tuple[str, float]:
        """A label scanned at the till-mode scanner: the lamp (green: the line is on the order) and the
        seconds from the code's last byte at the firmware's UART to the lamp."""
        uart = self.scanner_uart
        mark = uart.mark()
        t = uart.scan(code)
        lamp = uart.wait_signal("LED", after=mark, timeout=5)  # the crew scans the next label at once
        return lamp.args[0], lamp.t - t

    def add(self, sku: str, qty: int = 1) -> None:
        r = self.page.post("/till/api/cart/lines", json={"sku": sku, "qty": qty})
        assert r.status_code == 200, r.text

    def pay(self, payment: str = "cash") -> tuple[dict, float]:
        """Pay the open order on the page; the order and when "pay" was pressed (monotonic)."""
        t = time.monotonic()
        r = self.page.post("/till/api/pay", json={"payment": payment})
        assert r.status_code == 200, r.text
        order = r.json()["order"]
        self.confirmed[order["id"]] = order
        return order, t

    # ------------------------------------------------------------ a power cut

    def power_cut(self) -> None:
        """SIGKILL the agent: what pulling the Pi's plug does to it."""
        self.agent.kill()
        self.agent.wait(10)

    def power_back(self) -> None:
        """The agent again on the same data folder and port; the crew signs in again (sessions are in
        the agent's memory) and the scanner is answered again. The open order the cut left is emptied:
        the crew starts that sale again."""
        self.page.close()
        self._spawn_agent()
        self._sign_in()
        self._scanner_answered()

    # ------------------------------------------------------------ the uplink

    def cut_uplink(self) -> None:
        """The venue's internet goes: the fleet broker dies, the kit's bridge queues what it owes."""
        self.net.fleet_broker.kill()

    def restore_uplink(self) -> None:
        self.net.fleet_broker.start()

    # ------------------------------------------------------------ what the fleet has

    def fleet_order_ids(self) -> list[str]:
        with self.fleet.store.engine.connect() as conn:
            return [i for (i,) in conn.exec_driver_sql("SELECT id FROM retail_orders").all()]

    def fleet_order_events(self) -> list[str]:
        """The order id of every order event in the fleet's ledger (one row per upload stored)."""
        with self.fleet.store.engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT body FROM events WHERE kind = 'order'").all()
        return [json.loads(b)["data"]["id"] for (b,) in rows]

    # ------------------------------------------------------------ tear-down

    def close(self) -> None:
        for step in (self._close_scanner, self._close_agent, self._close_fleet, self._close_net, self.sim.stop):
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - every part must still be stopped
                self.say(f"stopping the stall: {exc!r}")
        if self._log is not None:
            self._log.close()

    def _close_scanner(self) -> None:
        if self.scanner is not None:
            self.scanner.kill()
        if self.scanner_uart is not None:
            self.scanner_uart.close()

    def _close_agent(self) -> None:
        if self.page is not None:
            self.page.close()
        if self.agent is not None and self.agent.poll() is None:
            self.agent.terminate()
            try:
                self.agent.wait(15)
            except subprocess.TimeoutExpired:
                self.agent.kill()
                self.agent.wait(5)

    def _close_fleet(self) -> None:
        if self.fleet is not None:
            self.fleet.ingest.stop()
            self.fleet.store.close()

    def _close_net(self) -> None:
        if self.net is not None:
            self.net.close()


def run_in_thread(fn, *args) -> threading.Thread:
    t = threading.Thread(target=fn, args=args, daemon=True)
    t.start()
    return t
