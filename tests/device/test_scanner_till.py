"""The door scanner in till mode (device/lib/till.py): a product label scanned adds a line at the kit's till.

The real firmware from its ROMFS image in the unix port (64 KB heap, as test_scanner_app), its QR
module simulated (simulators/scanner.py sends a 1D code as a GM65 does: the text and CR), a real
Mosquitto, and the agent's real till (agent/till/: Till, and TillScans answering on the till/tilled
channels, kits/contract.py TillScan and TillAnswer). What the crew at the stall sees and hears: green and one short beep when the line is on
the order; red and one long low beep when the till says no (unknown SKU: the order is unchanged) or
the code is no product (a ticket is never admitted in till mode); red and two short low beeps, "scan
again", when no answer comes. A scan at the till is not a check-in. Switched back to door by the
fleet's config, the door admits tickets as before.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from agent.till.scans import TillScans
from agent.till.service import Till
from kits.contract import TillAnswer, encode, topic
from kits.retail.sku import alnum_sku, ean13_check, rcn13, sku_problem
from kits.tickets import EventKey, issue
from simulators.scanner import ScannerSim
from tests.conftest import publisher, wait_until
from tests.device.firmware import UNIX_BOARD, Device, rom_images, rom_names_bytes  # noqa: F401 - fixture
from tests.device.mpy import run_mpy
from tests.device.test_scanner_app import PEAK_TARGET, SCANNER, free_port, scans, start, stored, write_config
from tests.test_till_service import product

KIT = "demo"
TREE = f"popkit/v1/{KIT}/{SCANNER}"
EVENT = "STALL-1"
MUG, PRINT, TEE = rcn13(1), rcn13(2), "TEE-BLK-M"
CATALOG = [product(MUG, "Mug", 800, 5), product(PRINT, "Print", 1500, 3), product(TEE, "Tee", 1250, 2)]
UNKNOWN = rcn13(77)  # a well-formed RCN-13 the catalog does not carry

# Till mode holds device/lib/till.py (from ROMFS its functions, class and names take ~1.3 KB of heap;
# frozen on an ESP32 the code stays in flash) and one Till (~0.6 KB: the question's buffer, an Event).
TILL_HEAP = 2 * 1024

GREEN_BEEP = [("2700", "120")]
LONG_LOW = [("600", "500")]
SCAN_AGAIN = [("600", "120"), ("600", "120")]


class _FirstAnswerLost:
    """The till's client, as the till's first answer sees it: lost on the way (QoS 0)."""

    def __init__(self, client):
        self.client, self.lost = client, False

    def publish(self, *args, **kwargs):
        if not self.lost:
            self.lost = True
            return None
        return self.client.publish(*args, **kwargs)


class LossyTillScans(TillScans):
    """The agent's answering, except that its first answer never reaches the scanner."""

    def _on_message(self, client, userdata, msg) -> None:
        self._lossy = getattr(self, "_lossy", None) or _FirstAnswerLost(client)
        super()._on_message(self._lossy, userdata, msg)


class KitTill:
    """The agent's till with its catalog, and its answering of the scanners (which a test may stop)."""

    def __init__(self, url: str, path: Path):
        self.url = url
        self.till = Till(path, KIT, "Demo stall").start()
        self.till.load_catalog(CATALOG, "fleet", 1)
        self.scans: TillScans | None = None
        self.listen()

    def listen(self, lose_first_answer: bool = False) -> None:
        self.scans = (LossyTillScans if lose_first_answer else TillScans)(KIT, self.url, self.till).start()
        wait_until(self.scans.ready.is_set, what="the till subscribed to the scanners")

    def deaf(self) -> None:
        self.scans.stop()
        self.scans = None

    def cart(self, station: str) -> dict[str, int]:
        return {x["sku"]: x["qty"] for x in self.till.cart(station)["lines"]}

    def close(self) -> None:
        if self.scans is not None:
            self.scans.stop()
        self.till.close()


@pytest.fixture
def kit_till(broker, tmp_path):
    t = KitTill(broker.url, tmp_path / "till.db")
    yield t
    t.close()


def till_config(path: Path, sim: ScannerSim, port: int, flash: Path, keys: list[EventKey], **mode) -> Path:
    write_config(path, sim, port, flash, keys)
    cfg = json.loads(path.read_text())
    path.write_text(json.dumps({**cfg, **mode}))
    return path


def show(sim: ScannerSim, code: str, latencies: list[float] | None = None) -> tuple[str, list[tuple[str, str]]]:
    """Scan ``code``; the lamp, and the beeps (Hz, ms) sounded until the lamp went dark. ``latencies``
    gets the seconds from the scan's last byte to the lamp."""
    mark = sim.mark()
    t = sim.scan(code)
    led = sim.wait_signal("LED", after=mark, timeout=5)
    lamp = led.args[0]
    if latencies is not None:
        latencies.append(led.t - t)
    sim.wait_signal("LED", after=mark, timeout=5, exclude=("green", "red"))  # dark again: the pattern is over
    beeps = [s.args for s in sim.since(mark) if s.kind == "BUZZ" and s.args[0] != "0"]
    return lamp, beeps


def tills(dev: Device) -> list[tuple[str, str, str]]:
    """(outcome, sku, qty) of each till-mode scan, as the device printed them."""
    return [(m.group(1), m.group(2), m.group(3)) for m in dev.matching(r"TILL (\w+) (\S+) (\S+) \S+")]


def wait_online(seen, before: int = 0) -> None:
    """Wait for the scanner's birth: an online state after the ``before`` states already seen."""
    def born() -> bool:
        states = [json.loads(p) for p in seen.on("/state")[before:]]
        return bool(states) and states[-1]["online"] is True
    wait_until(born, 15, what="the scanner online")


def set_mode(fleet, **mode) -> int:
    """Ops switch the scanner at the fleet, as docs/retail.md says: its desired config with ``mode`` (and
    ``till``) set, its other keys kept. Returns the config's version."""
    data = fleet.api.get(f"/api/v1/devices/{SCANNER}/config").json()["data"] or {}
    r = fleet.api.put(f"/api/v1/devices/{SCANNER}/config", json={"data": {**data, **mode}})
    assert r.status_code == 200, r.text
    return r.json()["version"]


def late_answer(broker, question: int) -> None:
    """An answer to an earlier question, arriving late (the till was slow, the network held it)."""
    client = publisher(broker.url)
    try:
        body = encode(TillAnswer(id=question, ok=True, sku=PRINT, qty=99))
        client.publish(topic(KIT, SCANNER, "tilled"), body, qos=0).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


def test_till_mode_lamp_and_beeps_follow_the_tills_answer(broker, fleet, collect, kit_till, rom_images, tmp_path):  # noqa: F811
    seen = collect(f"{TREE}/state", f"{TREE}/event")
    key = EventKey.generate(EVENT)
    now = int(time.time())
    guest = issue(key, EVENT, "G00001", "GA", now - 60, now + 3600)
    sim = ScannerSim()
    cfg = till_config(tmp_path / "scanner.json", sim, broker.port, tmp_path / "flash", [key], mode="till", till="stall-2")
    try:
        dev = start(rom_images, cfg, sim)
        dev.expect(r"MODE till stall-2")
        wait_online(seen)

        assert show(sim, MUG) == ("green", GREEN_BEEP)
        assert show(sim, MUG) == ("green", GREEN_BEEP)
        assert show(sim, TEE.lower()) == ("green", GREEN_BEEP)  # letter case is the till's business: same SKU
        assert kit_till.cart("stall-2") == {MUG: 2, TEE: 1}
        assert kit_till.cart("main") == {}

        # an unknown SKU: the scanner says so, the order stays as it was
        assert show(sim, UNKNOWN) == ("red", LONG_LOW)
        assert kit_till.cart("stall-2") == {MUG: 2, TEE: 1}

        # what is no product code is refused at the scanner, the till never asked: a guest's ticket, a
        # misread EAN-13 (check digit), a poster's URL
        asked = kit_till.scans.counts["scanned"]
        for code in (guest, MUG[:-1] + str((int(MUG[-1]) + 1) % 10), "https://example.com/x"):
            assert show(sim, code) == ("red", LONG_LOW), code
        assert kit_till.scans.counts["scanned"] == asked

        # the till stops answering: red and "scan again"; an answer that comes late belongs to the scan
        # it answers, not to the next one; answering again, the till is heard at once
        kit_till.deaf()
        assert show(sim, PRINT) == ("red", SCAN_AGAIN)
        missed = int(dev.matching(r"TILL no_answer - - (\d+)")[-1].group(1))
        kit_till.listen()
        mark = sim.mark()
        sim.scan(PRINT)
        late_answer(broker, missed)
        assert sim.wait_signal("LED", after=mark).args[0] == "green"
        sim.wait_signal("LED", after=mark, exclude=("green", "red"))
        assert kit_till.cart("stall-2") == {MUG: 2, TEE: 1, PRINT: 1}

        # the broker gone: "scan again" at once; back, the scanner subscribes again and is answered
        born = len(seen.on("/state"))
        broker.kill()
        assert show(sim, MUG) == ("red", SCAN_AGAIN)
        broker.start()
        wait_online(seen, born)
        wait_until(kit_till.scans.ready.is_set, what="the till back on the broker")
        assert show(sim, MUG) == ("green", GREEN_BEEP)

        # the till's answer lost on the way (QoS 0): the scanner asks the same question again and the
        # till answers it from what it said, so one scan is one line, and the crew hears green
        kit_till.deaf()
        kit_till.listen(lose_first_answer=True)
        assert show(sim, MUG) == ("green", GREEN_BEEP)
        assert kit_till.cart("stall-2")[MUG] == 4
        assert kit_till.scans.counts["repeated"] >= 1 and kit_till.scans.counts["scanned"] == 1

        # a queue at the stall: scan after scan; the heap keeps nothing of them
        dev.expect(r"MEM", after=dev.mark(), timeout=5)
        before = int(dev.matching(r"MEM (\d+)")[-1].group(1))
        lat: list[float] = []  # scan to lamp: the line is on the order before the answer leaves the till
        for _ in range(60):
            mark = sim.mark()
            t = sim.scan(PRINT)
            led = sim.wait_signal("LED", after=mark)
            assert led.args[0] == "green"
            lat.append(led.t - t)
        dev.expect(r"MEM", after=dev.mark(), timeout=5)
        after = int(dev.matching(r"MEM (\d+)")[-1].group(1))
        print(f"\ntill mode, scan (CR sent) to green lamp through the agent's till, {len(lat)} scans: "
              f"p50 {sorted(lat)[len(lat) // 2] * 1000:.1f} ms, max {max(lat) * 1000:.1f} ms; live heap {before} -> {after} B")
        assert after - before <= 256, "the live heap grew with the scans"

        assert tills(dev) == [
            ("ok", MUG, "1"), ("ok", MUG, "2"), ("ok", TEE, "1"), ("unknown_sku", "-", "-"),
            *[("bad_code", "-", "-")] * 3,
            ("no_answer", "-", "-"), ("ok", PRINT, "1"), ("no_answer", "-", "-"), ("ok", MUG, "3"), ("ok", MUG, "4"),
            *[("ok", PRINT, str(n)) for n in range(2, 62)]]
        assert kit_till.cart("stall-2") == {MUG: 4, TEE: 1, PRINT: 61}
        # none of it was a check-in: no verdict, no event on the wire, nothing in the fleet's attendance
        assert scans(dev) == []
        assert not seen.on("/event")
        wait_until(lambda: fleet.ingest.metrics.ingested > 0, what="the scanner's telemetry in the fleet")
        assert stored(fleet) == []

        # the heap: the door's budget plus what the till's module and objects take
        image = dev.image_bytes
        peak = max(int(m.group(1)) for m in dev.matching(r"MEM (\d+)")) - image
        names = rom_names_bytes("scanner", rom_images["scanner"])
        print(f"\nscanner heap in till mode: live peak {peak} B, {peak - names} B without the {names} B of names")
        assert peak - names <= PEAK_TARGET + TILL_HEAP
    finally:
        sim.close()


def test_the_fleets_config_switches_door_and_till_and_the_door_is_unchanged(broker, fleet, collect, kit_till,
                                                                            rom_images, tmp_path):  # noqa: F811
    seen = collect(f"{TREE}/state")
    key = EventKey.generate(EVENT)
    now = int(time.time())
    first, second = (issue(key, EVENT, f"G{n:05d}", "GA", now - 60, now + 3600) for n in (1, 2))
    sim = ScannerSim()
    cfg = till_config(tmp_path / "scanner.json", sim, broker.port, tmp_path / "flash", [key])  # a door: no mode
    try:
        door = start(rom_images, cfg, sim)
        wait_online(seen)
        assert show(sim, first)[0] == "green"
        assert show(sim, MUG) == ("red", SCAN_AGAIN)  # a door reads a product label as a bad ticket, as ever

        version = set_mode(fleet, mode="till")
        door.expect(r"MODE till main")
        assert show(sim, MUG) == ("green", GREEN_BEEP)
        assert show(sim, second) == ("red", LONG_LOW)  # never admitted at the till
        born = len(seen.on("/state"))
        door.kill()  # power cut: the config saved on flash keeps it a till

        dev = start(rom_images, cfg, sim)
        dev.expect(rf"CONFIG {version} ")
        dev.expect(r"MODE till main")
        wait_online(seen, born)
        assert show(sim, MUG) == ("green", GREEN_BEEP)
        assert kit_till.cart("main") == {MUG: 2}

        set_mode(fleet, mode="door")
        dev.expect(r"MODE door")
        assert show(sim, second)[0] == "green"  # refused at the till, so not admitted: it comes in now
        assert show(sim, first)[0] == "red"  # admitted before the switches
        assert show(sim, MUG) == ("red", SCAN_AGAIN)
        assert kit_till.cart("main") == {MUG: 2}

        assert [v for v, *_ in scans(door)] == ["admitted", "malformed"]
        assert tills(door) == [("ok", MUG, "1"), ("bad_code", "-", "-")]
        assert [v for v, *_ in scans(dev)] == ["admitted", "already_admitted", "malformed"]
        assert tills(dev) == [("ok", MUG, "2")]
    finally:
        sim.close()


def test_a_till_with_no_link_says_scan_again_and_a_bad_station_leaves_a_door(rom_images, tmp_path):  # noqa: F811
    sim = ScannerSim()
    key = EventKey.generate(EVENT)
    cfg = till_config(tmp_path / "scanner.json", sim, free_port(), tmp_path / "flash", [key], mode="till")
    bad = till_config(tmp_path / "bad.json", sim, free_port(), tmp_path / "flash2", [key], mode="till", till="Stall 2")
    try:
        with start(rom_images, cfg, sim) as dev:
            assert show(sim, MUG) == ("red", SCAN_AGAIN)  # no broker: nobody to ask, said at once
            assert show(sim, "PK1:STALL-1:X") == ("red", LONG_LOW)
            assert tills(dev) == [("no_answer", "-", "-"), ("bad_code", "-", "-")]
        with start(rom_images, bad, sim) as dev:  # a station no till can have: said, and the scanner stays a door
            dev.expect(r"MODE bad till station 'Stall 2'")
            assert show(sim, MUG) == ("red", SCAN_AGAIN)
            assert [v for v, *_ in scans(dev)] == ["malformed"] and tills(dev) == []
    finally:
        sim.close()


def test_the_scanner_sends_every_code_a_catalog_can_hold_and_never_a_ticket(tmp_path):
    """device/lib/till.product() in the real MicroPython against kits/retail/sku.py: every SKU the catalog
    takes goes to the till; what goes there and is no SKU is for the till to refuse (a Code128 SKU
    longer than today's label allows, a country-specific EAN-13 prefix), never a ticket or junk."""
    key = EventKey.generate(EVENT)
    now = int(time.time())
    skus = [rcn13(n) for n in (1, 2, 99, 123456, 9_999_999_999)] + ["4006381333931", "5901234123457"]
    skus += [alnum_sku("tee", "blk", "m"), alnum_sku("a"), alnum_sku("p1"), alnum_sku("x", "1", "2", "3")]
    body = [f"{n:012d}" for n in (4 * 10**10, 123456789012, 290000000001, 777)]
    skus += [b + str(ean13_check(b)) for b in body if sku_problem(b + str(ean13_check(b))) is None]
    for_the_till = ["tee-blk-m", "LONG-SKU-NAME-XL", "Z" * 32, "291234567890" + str(ean13_check("291234567890"))]  # a shape the scanner cannot judge
    refused = ([issue(key, EVENT, "G1", "GA", now, now + 60), "PK1:STALL-1:X", "https://example.com/p/1",
                "TEE--M", "-TEE", "TEE-", "12-34", "1234-56789012", "040000000001", "04000000000150", "Z" * 33,
                "TEE BLK", "TEE_BLK", "ÉTÉ"]
               + [b + str((ean13_check(b) + 1) % 10) for b in body])
    codes = skus + for_the_till + refused
    assert all(sku_problem(c) is None for c in skus)
    assert all(sku_problem(c) for c in for_the_till + refused)
    (tmp_path / "codes.json").write_text(json.dumps(codes))
    out = run_mpy("import json, till\n"
                  f"codes = json.load(open({str(tmp_path / 'codes.json')!r}))\n"
                  "print(json.dumps([till.product(c.encode()) for c in codes]))\n", UNIX_BOARD).stdout
    sent = dict(zip(codes, json.loads(out.splitlines()[-1])))
    assert [c for c in skus + for_the_till if not sent[c]] == []
    assert [c for c in refused if sent[c]] == []
