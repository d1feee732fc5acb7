"""Labels from the fleet (issue 19): ``POST /api/v1/kits/{kit}/labels`` -> the ``labels`` command ->
the kit's agent renders and queues them -> the ESC/POS simulator prints them, decoded back to their
SKUs with zxing-cpp. Also what the route and the agent refuse (nothing sent, nothing queued), who
may ask, the audit log, and a request too big for one command split into parts under 4096 bytes.

The agent runs in this process with a whole simulated kit (tests/test_agent_daemon.py's kit); the
fleet, the broker and the printer's wire are real."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from dataclasses import dataclass

import pytest
import zxingcpp

from agent.daemon import Agent
from agent.labels_cmd import label_jobs, run_labels
from agent.printing import PrintQueue
from agent.till.service import Till
from fleet.auth.testing import client_as
from kits.contract import MAX_DEVICE_PAYLOAD, decode
from kits.retail.catalog import parse_catalog_csv
from kits.retail.labelcmd import LabelsArgs
from tests.conftest import Collector, start_fleet, wait_until
from tests.test_agent_daemon import KIT, running_kit

EVENT = "FEST25"
CATALOG = (
    "sku,name,price,tax_rate,stock,kit,event,colour,size\n"
    "TEE-BLK-M,Tee,20.00,20,3,dk,FEST25,black,M\n"
    "0400000000015,Tote,12.50,20,2,dk,FEST25,natural,\n"
    "POSTER-A2,Poster,8,0,0,dk,FEST25,,\n"
)
STOCK = {"TEE-BLK-M": 3, "0400000000015": 2}


@dataclass
class LabelKit:
    """The fleet (API, ingest) and kit ``dk``'s agent running its simulated parts, with a catalog."""

    fleet: object
    agent: Agent
    hw: object

    @property
    def roll(self):
        return self.hw.sims["dk-printer"].roll

    def printed(self) -> Counter:
        """Labels on paper by SKU (the wire's count; the self-test label left out)."""
        return Counter(c for c in self.roll.codes("barcode") if c != "SELFTEST")


def start_label_kit(broker, tmp_path, catalog: str = CATALOG):
    """Yields a LabelKit; the agent, its link and the fleet stopped after."""
    def import_catalog(fleet) -> None:
        r = fleet.api.post("/api/v1/kits/dk/catalog", content=catalog, headers={"Content-Type": "text/csv"})
        assert r.status_code == 200, r.text

    with running_kit(broker, tmp_path, before=import_catalog) as (fleet, agent, hw):
        yield LabelKit(fleet, agent, hw)


@pytest.fixture
def kit(broker, tmp_path):
    yield from start_label_kit(broker, tmp_path)


def settled(fleet, command_id: str, device: str = "dk-agent") -> dict:
    def done():
        for c in fleet.api.get(f"/api/v1/devices/{device}/commands").json():
            if c["id"] == command_id and c["status"] != "pending":
                return c
    return wait_until(done, 15, what=f"the agent's ack of command {command_id}")


def queue_job(queue: PrintQueue, job_id: int) -> dict:
    """A queued job's description, as the queue stored it."""
    with sqlite3.connect(queue.path) as db:
        return json.loads(db.execute("SELECT job FROM print_jobs WHERE id = ?", (job_id,)).fetchone()[0])


def ask(client, **body):
    return client.post("/api/v1/kits/dk/labels", json={"event": EVENT, **body})


# ---------------------------------------------------------------- end to end

def test_all_stock_one_product_and_a_reprint_print_on_the_kit_and_decode_to_their_skus(kit):
    fleet = kit.fleet
    r = ask(fleet.api, all=True)
    assert r.status_code == 202, r.text
    out = r.json()
    assert (out["agent"], out["printer"], out["template"], out["labels"], out["skus"], out["skipped"]) == (
        "dk-agent", "dk-printer", "shelf-40x30", 5, 2, ["POSTER-A2"])
    [cmd] = out["commands"]
    assert cmd["action"] == "labels" and cmd["status"] == "pending" and cmd["requested_by"] == "ops-test"
    acked = settled(fleet, cmd["id"])
    assert acked["status"] == "ok", acked
    assert acked["detail"].startswith("5 labels of 2 SKUs queued on dk-printer: jobs ")
    wait_until(lambda: kit.printed() == Counter(STOCK), 15, what="five labels on paper")
    # zxing-cpp reports identical symbols on one image once: the PNG proves each SKU reads back, the
    # count is the wire's. The receipt printer prints the RCN-13 as Code128 of the same 13 digits.
    found = {(r.format.name, r.text) for r in zxingcpp.read_barcodes(kit.roll.to_png())}
    assert {("Code128", sku) for sku in STOCK} <= found
    assert "Tee" in kit.roll.text and "black / M" in kit.roll.text and "12.50" in kit.roll.text

    # A reprint of two damaged labels, then one product's whole stock.
    r = ask(fleet.api, sku="tee-blk-m", count=2)
    assert r.status_code == 202 and r.json()["labels"] == 2, r.text
    assert settled(fleet, r.json()["commands"][0]["id"])["status"] == "ok"
    r = ask(fleet.api, sku="0400000000015", all=True)
    assert r.status_code == 202 and r.json()["labels"] == 2, r.text
    assert settled(fleet, r.json()["commands"][0]["id"])["status"] == "ok"
    wait_until(lambda: kit.printed() == Counter({"TEE-BLK-M": 5, "0400000000015": 4}), 15,
               what="the reprint and the product's stock on paper")

    # The audit log: the request and the command, each with who asked; the command with how it ended.
    audit = fleet.api.get("/api/v1/audit").json()
    commands = [e for e in audit if e["what"] == "command labels"]
    assert len(commands) == 3 and {e["by"] for e in commands} == {"ops-test"}
    assert all(e["result"].startswith("ok: ") and e["target"] == "dk-agent" for e in commands)
    assert [e["by"] for e in audit if e["what"] == "POST /api/v1/kits/{kit_id}/labels"] == ["ops-test"] * 3


def test_the_agent_refuses_what_it_cannot_print_and_queues_nothing(kit):
    fleet = kit.fleet

    def command(args: dict) -> dict:
        r = fleet.api.post("/api/v1/devices/dk-agent/commands", json={"action": "labels", "args": args})
        assert r.status_code == 202, r.text
        return settled(fleet, r.json()["id"])

    item = {"sku": "TEE-BLK-M", "n": 1, "name": "Tee", "variant": "black / M", "price": 2000, "currency": "EUR"}
    long_name = dict(item, sku="LONG-1", name="A name far too long for forty millimetres")
    before = kit.agent.queues["dk-printer"].counts()
    said = command({"event": EVENT, "items": [item, long_name]})
    assert said["status"] == "rejected"
    assert said["detail"].startswith("labels: 1 refused, nothing queued: LONG-1: name 'A name far too long")
    said = command({"event": EVENT, "items": [item], "printer": "dk-lamp"})
    assert (said["status"], said["detail"]) == ("rejected", "labels: dk-lamp is not a printer of this kit (dk-printer)")
    said = command({"event": EVENT, "items": [item], "template": "huge"})
    assert said["status"] == "rejected" and "no label template 'huge'; built-in: " in said["detail"]
    said = command({"event": EVENT, "items": []})
    assert said["status"] == "rejected" and said["detail"].startswith("labels: items: ")
    assert kit.agent.queues["dk-printer"].counts() == before
    assert kit.printed() == Counter()


# ---------------------------------------------------------------- the agent's handler alone

def test_the_tills_catalog_gives_the_price_the_till_sells_at(tmp_path):
    products, errors = parse_catalog_csv(CATALOG.replace("20.00,20,3", "18.00,20,3"), from_ms=0)
    assert not errors
    till = Till(tmp_path / "till.db", "dk")
    till.load_catalog(products, "upload", None)
    queue = PrintQueue(tmp_path / "q.db", open_printer=lambda: pytest.fail("not started: nothing prints"))
    args = LabelsArgs(event=EVENT, items=[
        {"sku": "TEE-BLK-M", "n": 2, "name": "Tee", "variant": "black / M", "price": 2000, "currency": "EUR"},
        {"sku": "MUG-1", "n": 1, "name": "Mug", "price": 900, "currency": "EUR"}])
    assert run_labels(args.model_dump(), {"dk-printer": queue}, till)[0] == "ok"
    assert "18.00" in " ".join(b.get("text", "") for b in queue_job(queue, 1)["blocks"])
    till.close()
    jobs, refused = label_jobs(args, products)
    assert refused == [] and [(sku, n) for sku, n, _ in jobs] == [("TEE-BLK-M", 2), ("MUG-1", 1)]
    texts = [[b["text"] for b in job["blocks"] if b["kind"] == "text"] for _, _, job in jobs]
    assert "18.00" in " ".join(texts[0])  # the till's price, not the command's 20.00
    assert "20.00" not in " ".join(texts[0])
    assert "9.00" in " ".join(texts[1])  # not in the till's catalog: what the command carries
    # Another event's row of the same SKU is not this event's price.
    jobs, _ = label_jobs(args.model_copy(update={"event": "OTHER"}), products)
    assert "20.00" in " ".join(b["text"] for b in jobs[0][2]["blocks"] if b["kind"] == "text")


def test_one_job_per_label_lands_in_the_printers_queue(tmp_path):
    queue = PrintQueue(tmp_path / "q.db", open_printer=lambda: pytest.fail("not started: nothing prints"))
    args = {"event": EVENT, "items": [
        {"sku": "TEE-BLK-M", "n": 3, "name": "Tee", "price": 2000, "currency": "EUR"}], "part": [2, 3]}
    status, detail = run_labels(args, {"dk-printer": queue})
    assert (status, detail) == ("ok", "3 labels of 1 SKU queued on dk-printer (part 2 of 3): jobs 1-3")
    assert queue.counts().queued == 3
    status, detail = run_labels({"event": "fest", "items": []}, {"dk-printer": queue})
    assert status == "rejected" and detail.startswith("labels: event: ") and "(+1 more)" in detail
    assert run_labels({"event": EVENT, "items": args["items"]}, {}) == ("rejected", "labels: this kit has no printer")
    assert queue.counts().queued == 3


# ---------------------------------------------------------------- the route's refusals and roles

@pytest.fixture
def fleet(broker, tmp_path):
    """The fleet with kit dk and its catalog, and no agent running: what the route itself answers."""
    path = tmp_path / "kit.toml"
    path.write_text(KIT)
    f = start_fleet(broker.url, f"sqlite:///{tmp_path / 'fleet.db'}", kits=(path,))
    r = f.api.post("/api/v1/kits/dk/catalog", content=CATALOG, headers={"Content-Type": "text/csv"})
    assert r.status_code == 200, r.text
    yield f
    f.ingest.stop()
    f.store.close()


@pytest.mark.parametrize("body, status, said", [
    ({}, 422, "say which labels"),
    ({"all": True, "count": 2}, 422, "count is for a reprint"),
    ({"sku": "TEE-BLK-M", "count": 1000}, 422, "less than or equal to 999"),
    ({"all": True, "template": "huge"}, 422, "no label template 'huge'; built-in: price-50x25, shelf-40x30, tag-62"),
    ({"sku": "NOPE-1", "count": 1}, 422, "1 refused, nothing sent: NOPE-1: not in the catalog"),
    ({"sku": "POSTER-A2", "all": True}, 422, "no stock, no labels: POSTER-A2"),
    ({"all": True, "printer": "dk-lamp"}, 404, "no printer 'dk-lamp' in kit dk"),
    ({"all": True, "event": "NOWHERE"}, 404, "kit dk has no catalog for event NOWHERE"),
    ({"all": True, "colour": "red"}, 422, "Extra inputs are not permitted"),
])
def test_refused_requests_say_why_and_send_nothing(fleet, broker, body, status, said):
    sub = Collector(broker.url, ["popkit/v1/dk/+/cmd"])
    try:
        r = ask(fleet.api, **body)
        assert r.status_code == status, r.text
        assert said in str(r.json()["detail"])
        assert fleet.api.get("/api/v1/devices/dk-agent/commands").json() == []
        assert sub.messages == []
    finally:
        sub.close()


def test_crew_print_for_their_kits_only_and_venue_users_not_at_all(fleet):
    app = fleet.api.app
    mine = client_as(app, "crew-dk", "crew", kits=["dk"])
    other = client_as(app, "crew-demo", "crew", kits=["demo"])
    venue = client_as(app, "venue-v", "venue", venues=["hall"])
    assert ask(other, all=True).status_code == 404
    assert ask(venue, all=True).status_code == 403
    assert fleet.api.post("/api/v1/kits/nope/labels", json={"event": EVENT, "all": True}).status_code == 404
    r = ask(mine, sku="TEE-BLK-M", count=1)
    assert r.status_code == 202, r.text
    assert r.json()["commands"][0]["requested_by"] == "crew-dk"


def test_a_request_too_big_for_one_command_goes_in_parts_each_within_the_limit(broker, tmp_path):
    rows = "".join(f"SKU-{i:03d},Product number {i},{i}.50,20,{i % 4 + 1},dk,FEST25,colour {i},XL\n"
                   for i in range(120))
    path = tmp_path / "kit.toml"
    path.write_text(KIT)
    f = start_fleet(broker.url, f"sqlite:///{tmp_path / 'fleet.db'}", kits=(path,))
    sub = Collector(broker.url, ["popkit/v1/dk/dk-agent/cmd"])
    try:
        header = "sku,name,price,tax_rate,stock,kit,event,colour,size\n"
        r = f.api.post("/api/v1/kits/dk/catalog", content=header + rows, headers={"Content-Type": "text/csv"})
        assert r.status_code == 200, r.text
        r = ask(f.api, all=True)
        assert r.status_code == 202, r.text
        out = r.json()
        n = len(out["commands"])
        assert n > 1 and out["labels"] == sum(i % 4 + 1 for i in range(120)) and out["skus"] == 120
        wait_until(lambda: len(sub.on("dk-agent/cmd")) == n, what=f"{n} labels commands at the agent")
        sent = [decode("cmd", p) for p in sub.on("dk-agent/cmd")]
        assert all(len(p) <= MAX_DEVICE_PAYLOAD for p in sub.on("dk-agent/cmd"))
        parts = [LabelsArgs.model_validate(c.args) for c in sent]
        assert sorted(p.part for p in parts) == [(i, n) for i in range(1, n + 1)]
        assert sum(p.labels for p in parts) == out["labels"]
        assert sorted(i.sku for p in parts for i in p.items) == [f"SKU-{i:03d}" for i in range(120)]
    finally:
        sub.close()
        f.ingest.stop()
        f.store.close()
