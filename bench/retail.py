"""Selling at the stall with the uplink cut, then reconciling: scan, receipt and upload times.

    python -m bench.retail [--orders N] [--scan-every K] [--db URL|pg|sqlite]

The stall as in the field, all on this machine (tests/retail_rig.py): the kit broker bridged to the
fleet broker as ``popkit kit provision`` makes them, the fleet's ingest and API in this process on
``--db`` (default ``pg``: a throwaway database on the local PostgreSQL, SQLite when there is none,
as the JSON's ``db`` says), the agent as its own process with its till and till page, its receipts
on the ESC/POS simulator (a pty this process reads), and one scanner in till mode running the real
firmware from its ROMFS image in the unix-port MicroPython.

1. Baseline, before the agent starts: ``mqtt_rtt_ms_p99``, a bare MQTT request and answer on the
   kit broker over the scan's own path (the scanner's account publishes on its ``till`` topic, the
   agent's account answers on ``tilled``), 300 times.
2. The uplink is cut (the fleet broker killed). The crew takes ``--orders`` orders (600) on the till
   page's API: a tapped line or two, and on every ``--scan-every``-th order (1: each) a product label
   scanned at the till-mode scanner, then "pay".
   - ``scan_to_line_ms``: from the label's last byte at the firmware's UART (the scanner simulator's
     write) to the scanner's lamp going green, which it does on the till's answer that the line is
     on the order;
   - ``order_to_receipt_ms``: from the page's "pay" call to the receipt's last byte (its cut) at the
     printer simulator, the receipt found by the order id its QR carries.
3. The uplink returns: ``upload_orders_s`` until the fleet has every order (rows in its orders
   table), then the till's pending count drains; ``first_order_s`` until the first is there (the
   bridge reconnecting, mostly: the rig's retries every 1-3 s, a venue kit's 2-30 s). ``lost``: orders the till confirmed that the fleet
   lacks; ``duplicates``: orders stored more than once (the fleet's ledger rows of kind order beyond
   one per id); ``conflicts``: ids the fleet flagged with a second body; ``dup_uploads``: uploads the
   fleet recognised and dropped (not an error: a resend).
4. Baseline after the run: ``raw_receipt_ms_p99``, the same receipts' bytes written straight to a
   fresh printer simulator's pty with pyserial, until its cut.

Ratios: ``scan_vs_mqtt`` = scan_to_line p99 / mqtt_rtt p99; ``receipt_vs_raw`` = order_to_receipt
p99 / raw_receipt p99.

Acceptance (issue 19): lost 0, duplicates 0, scan_to_line_ms_p99 <= 300, order_to_receipt_ms_p99
<= 1,000, every scan answered green, every receipt printed; the exit status is 1 when one misses.
Progress on stderr; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

from bench.firmware import pct, say

SCAN_MS_LIMIT, RECEIPT_MS_LIMIT = 300, 1000
BASELINE_ROUNDS = 300
RAW_RECEIPTS = 50


class Broken(RuntimeError):
    """The bench could not measure (a part failed), as opposed to a limit missed."""


def fleet_db(choice: str, stack: ExitStack, work: Path) -> tuple[str, str]:
    """(URL, kind) of the fleet's database."""
    if choice not in ("pg", "sqlite"):
        return choice, "url"
    if choice == "pg":
        from bench.scale import PG_ADMIN, throwaway_pg

        try:
            return throwaway_pg(stack, "popkit_bench_retail"), "postgresql"
        except Exception as exc:  # noqa: BLE001 - no server: measure on SQLite and say so
            say(f"bench.retail: no PostgreSQL at {PG_ADMIN} ({exc}); the fleet runs on SQLite")
    return f"sqlite:///{work / 'fleet.db'}", "sqlite"


def mqtt_round_trips(stall, rounds: int) -> list[float]:
    """ms of a bare request/answer over the kit broker on the scan's topics, with the devices' accounts."""
    from kits.contract import topic
    from plumbing.mqtt import client_for, session_kwargs
    from tests.retail_rig import AGENT, KIT, SCANNER

    ask, answer = topic(KIT, SCANNER, "till"), topic(KIT, SCANNER, "tilled")
    got = threading.Event()
    subscribed = threading.Semaphore(0)
    clients = []
    for who, sub in ((SCANNER, answer), (AGENT, ask)):
        c, target = client_for(stall.net.kit_url(who), f"bench-{who}-{secrets.token_hex(3)}")
        c.on_connect = lambda cl, *_a, s=sub: cl.subscribe(s, qos=0)
        c.on_subscribe = lambda *_a: subscribed.release()
        c.connect(target.host, target.port, **session_kwargs(c, clean_start=True))
        c.loop_start()
        clients.append(c)
    scanner, agent = clients
    agent.on_message = lambda cl, _u, msg: cl.publish(answer, msg.payload, qos=0)
    scanner.on_message = lambda *_a: got.set()
    try:
        for _ in clients:
            if not subscribed.acquire(timeout=10):
                raise Broken("the baseline's clients could not subscribe on the kit broker")
        out = []
        for i in range(rounds):
            got.clear()
            t = time.monotonic()
            scanner.publish(ask, json.dumps({"id": i, "code": "BENCH", "till": "main", "ts": 1}).encode(), qos=0)
            if not got.wait(5):
                raise Broken("a baseline round trip got no answer")
            out.append((time.monotonic() - t) * 1000)
        return out
    finally:
        for c in clients:
            c.disconnect()
            c.loop_stop()


def raw_receipts(printer, order_ids: list[str]) -> list[float]:
    """ms to write each receipt's bytes straight to a fresh printer simulator, until its cut."""
    import serial

    from simulators.printer import PrinterSimulator
    from tests.retail_rig import TimedPrinter

    model = TimedPrinter()
    sim = PrinterSimulator(model)
    sim.start()
    try:
        port = serial.Serial(sim.path, timeout=1)
        out = []
        for oid in order_ids:
            data = printer.receipt_bytes(oid)
            t = time.monotonic()
            port.write(data)
            port.flush()
            deadline = t + 10
            while oid not in model.printed:
                if time.monotonic() > deadline:
                    raise Broken(f"a raw receipt write never reached its cut ({oid})")
                time.sleep(0.0005)
            out.append((model.printed[oid] - t) * 1000)
        port.close()
        return out
    finally:
        sim.stop()


def take_orders(stall, n: int, scan_every: int) -> dict:
    from tests.retail_rig import POSTER, SCANNED, STICKERS, TEE, TOTE

    scans: list[float] = []
    paid: list[tuple[str, float]] = []
    refused: list[str] = []
    started = time.monotonic()
    for i in range(n):
        stall.add((TEE, TOTE, POSTER, STICKERS)[i % 4], 1 + (i % 5 == 0))
        if i % scan_every == 0:
            lamp, seconds = stall.scan(SCANNED[(i // scan_every) % 2])
            if lamp == "green":
                scans.append(seconds * 1000)
            else:
                refused.append(lamp)
        order, t = stall.pay(("cash", "card_terminal", "other")[i % 3])
        paid.append((order["id"], t))
        if (i + 1) % 100 == 0:
            say(f"  {i + 1} orders taken")
    return dict(scans=scans, paid=paid, refused=refused, take_s=time.monotonic() - started)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise Broken(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def run(orders: int, scan_every: int, db: str) -> dict:
    from popkit.romfs import build_image
    from tests.retail_rig import Stall

    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="popkit-bench-retail-")))
        db_url, db_kind = fleet_db(db, stack, work)
        image = build_image("scanner", "unix", work / "scanner.romfs")
        stall = Stall(work, db_url, say=lambda text: say(f"  {text}"))
        stack.callback(stall.close)
        say("bench.retail: the stall")
        stall.start_network()
        rtt = mqtt_round_trips(stall, BASELINE_ROUNDS)
        say(f"  baseline: MQTT request/answer on the kit broker p99 {pct(rtt, 99):.1f} ms")
        stall.start_kit(image)

        stall.cut_uplink()
        say(f"bench.retail: uplink cut; taking {orders} orders")
        taken = take_orders(stall, orders, scan_every)
        ids = [o for o, _t in taken["paid"]]
        try:
            wait_for(lambda: set(stall.printer.printed) >= set(ids), 120, "every receipt printed")
        except Broken as exc:
            say(f"bench.retail: {exc}")
        receipts = [(stall.printer.printed[o] - t) * 1000 for o, t in taken["paid"] if o in stall.printer.printed]
        if stall.fleet_order_ids():
            raise Broken("orders reached the fleet with the uplink cut: the cut did not hold")

        say("bench.retail: uplink back")
        back = time.monotonic()
        stall.restore_uplink()
        first: list[float] = []

        def arrived() -> bool:
            have = set(stall.fleet_order_ids())
            if have and not first:
                first.append(time.monotonic() - back)
            return have >= set(ids)

        wait_for(arrived, 300, "every order at the fleet")
        upload_s = time.monotonic() - back
        wait_for(lambda: stall.page.get("/till/api/pending").json()["orders"] == 0, 120, "the till's pending at 0")

        stored = stall.fleet_order_ids()
        events = stall.fleet_order_events()
        counts = stall.fleet.store.retail.orders.counts()
        lost = len(set(ids) - set(stored))
        duplicates = (len(stored) - len(set(stored))) + (len(events) - len(set(events)))

        sample = ids[:: max(1, len(ids) // RAW_RECEIPTS)][:RAW_RECEIPTS]
        raw = raw_receipts(stall.printer, [o for o in sample if o in stall.printer.printed])
        say(f"  baseline: raw receipt write p99 {pct(raw, 99):.1f} ms")

    scan_p99 = pct(taken["scans"], 99) if taken["scans"] else None
    receipt_p99 = pct(receipts, 99) if receipts else None
    return {
        "bench": "retail", "orders": orders,
        "scan_to_line_ms_p99": round(scan_p99, 1) if scan_p99 is not None else None,
        "order_to_receipt_ms_p99": round(receipt_p99, 1) if receipt_p99 is not None else None,
        "upload_orders_s": round(upload_s, 2), "lost": lost, "duplicates": duplicates,
        "mqtt_rtt_ms_p99": round(pct(rtt, 99), 2), "raw_receipt_ms_p99": round(pct(raw, 99), 2),
        "scan_vs_mqtt": round(scan_p99 / pct(rtt, 99), 1) if scan_p99 is not None else None,
        "receipt_vs_raw": round(receipt_p99 / pct(raw, 99), 1) if receipt_p99 is not None else None,
        "scan_to_line_ms_p50": round(pct(taken["scans"], 50), 1) if taken["scans"] else None,
        "order_to_receipt_ms_p50": round(pct(receipts, 50), 1) if receipts else None,
        "scans": len(taken["scans"]) + len(taken["refused"]), "scans_not_green": len(taken["refused"]),
        "receipts": len(receipts), "conflicts": counts["order_conflicts"], "dup_uploads": counts["order_duplicates"],
        "first_order_s": round(first[0], 2), "orders_per_s": round(orders / taken["take_s"], 1), "db": db_kind,
        "limits": {"scan_to_line_ms_p99": SCAN_MS_LIMIT, "order_to_receipt_ms_p99": RECEIPT_MS_LIMIT},
    }


def misses(r: dict) -> list[str]:
    out = []
    if r["lost"]:
        out.append(f"lost {r['lost']}")
    if r["duplicates"]:
        out.append(f"duplicates {r['duplicates']}")
    if r["conflicts"]:
        out.append(f"conflicts {r['conflicts']}")
    if r["scans_not_green"]:
        out.append(f"{r['scans_not_green']} scan(s) not answered green")
    if r["receipts"] != r["orders"]:
        out.append(f"{r['orders'] - r['receipts']} receipt(s) not printed")
    if r["scan_to_line_ms_p99"] is None or r["scan_to_line_ms_p99"] > SCAN_MS_LIMIT:
        out.append(f"scan_to_line_ms_p99 {r['scan_to_line_ms_p99']} > {SCAN_MS_LIMIT}")
    if r["order_to_receipt_ms_p99"] is None or r["order_to_receipt_ms_p99"] > RECEIPT_MS_LIMIT:
        out.append(f"order_to_receipt_ms_p99 {r['order_to_receipt_ms_p99']} > {RECEIPT_MS_LIMIT}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.retail", description=__doc__.split("\n\n")[0])
    ap.add_argument("--orders", type=int, default=600, help="orders taken with the uplink cut (600)")
    ap.add_argument("--scan-every", type=int, default=1,
                    help="a label scanned at the till-mode scanner on every K-th order (1: each)")
    ap.add_argument("--db", default="pg", help="the fleet's database: pg (a throwaway one; the default), sqlite, "
                                               "or a URL")
    args = ap.parse_args(argv)
    if args.orders < 1 or args.scan_every < 1:
        ap.error("--orders and --scan-every must be at least 1")
    import pytest  # the rig's waits fail as a test would: pytest's Failed

    try:
        result = run(args.orders, args.scan_every, args.db)
    except (Broken, AssertionError, pytest.fail.Exception) as exc:
        say(f"bench.retail: FAILED: {exc}")
        return 1
    except KeyboardInterrupt:
        say("bench.retail: interrupted")
        return 130
    missed = misses(result)
    result["acceptance"] = "ok" if not missed else "; ".join(missed)
    for m in missed:
        say(f"bench.retail: MISSED: {m}")
    print(json.dumps(result), flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
