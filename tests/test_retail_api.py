"""The fleet's catalog (fleet/retail/, fleet/api/routes/retail.py; issue 19): migration 0013 on both
backends, the all-or-nothing import with every line's problem, versioned prices, the CSV export's
round trip, who may do what, the audit log, and `popkit retail import --fleet` over real HTTP."""

from __future__ import annotations

import socket
import threading

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from fleet import db
from fleet.api.app import create_app
from fleet.auth.testing import client_as, ops_client, token_as
from fleet.retail import metrics as retail_metrics
from fleet.retail import tables as retail_tables
from fleet.retail.store import RetailStore
from fleet.store import Store
from kits.manifest import parse_manifest
from kits.retail.catalog import parse_catalog_csv
from popkit.cli import main
from tests.conftest import wait_until
from tests.test_updates_api import kit_toml

HEADER = "sku,name,price,tax_rate,stock,kit,event,colour,size\n"
GOOD = HEADER + (
    "0400000000015,Tee,20.00,20,30,alpha,FEST25,black,M\n"
    "0400000000022,Tee,20.00,20,12,alpha,FEST25,black,L\n"
    "TOTE-NAT,Tote bag,12.50,20,40,alpha,FEST25,natural,\n"
)
CSV = {"Content-Type": "text/csv"}


@pytest.fixture(params=["sqlite", "postgresql"])
def world(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'fleet.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    store = Store.open(url)
    for kit in ("alpha", "beta"):
        store.registry.register_kit(parse_manifest(kit_toml(kit, 1)))
    app = create_app(store)
    yield type("World", (), dict(
        store=store, app=app, ops=ops_client(app, "ops-olga"), crew=client_as(app, "crew-a", "crew", kits=["alpha"]),
        crew_b=client_as(app, "crew-b", "crew", kits=["beta"]),
        venue=client_as(app, "venue-v", "venue", venues=["hall"])))
    store.close()


def catalog(world, client=None, **params) -> dict:
    r = (client or world.ops).get("/api/v1/kits/alpha/catalog", params=params)
    assert r.status_code == 200, r.text
    return {p["sku"]: p for p in r.json()["products"]}


def test_migration_0013_gives_exactly_the_retail_tables(world):
    """Store.open ran every migration: the database matches the models, retail tables included."""
    assert {"retail_products", "retail_prices"} <= set(db.metadata.tables)
    assert retail_tables.retail_products.metadata is db.metadata
    with world.store.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        assert compare_metadata(ctx, db.metadata) == []


def test_a_csv_import_is_stored_with_version_one_prices_and_the_generated_skus(world):
    r = world.crew.post("/api/v1/kits/alpha/catalog", content=GOOD + ",Poster,8,0,5,alpha,FEST25,,\n", headers=CSV)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["products"], body["events"], len(body["added"]), body["removed"]) == (4, ["FEST25"], 4, [])
    got = catalog(world)
    assert got["TOTE-NAT"]["name"] == "Tote bag" and got["TOTE-NAT"]["variants"] == {"colour": "natural"}
    assert got["0400000000022"]["stock"] == 12 and got["0400000000022"]["variants"] == {"colour": "black", "size": "L"}
    assert [(v["version"], v["price"], v["tax_bp"]) for v in got["0400000000015"]["prices"]] == [(1, 2000, 2000)]
    poster = [p for p in got.values() if p["name"] == "Poster"]
    assert len(poster) == 1 and poster[0]["sku"].startswith("04")  # an RCN-13 made for it
    assert catalog(world, event="FEST25") == got and catalog(world, event="OTHER") == {}
    assert world.ops.get("/api/v1/kits/beta/catalog").json()["products"] == []


def test_a_bad_file_is_422_with_every_line_and_column_and_nothing_is_stored(world):
    counted = dict(retail_metrics.CHANGES)
    assert world.ops.post("/api/v1/kits/alpha/catalog", content=GOOD, headers=CSV).status_code == 200
    before = catalog(world)
    bad = GOOD.replace("20.00,20,12", "20.005,20,12").replace("12.50,20,40", "12.50,20,-4") + (
        "0400000000015,Tee,20.00,20,1,alpha,FEST25,black,M\n"  # the same SKU again
        "0400000000039,Cap,9,20,3,beta,FEST25,,\n")  # another kit's line in this kit's catalog
    r = world.ops.post("/api/v1/kits/alpha/catalog", content=bad, headers=CSV)
    assert r.status_code == 422
    where = [tuple(e["loc"][1:]) for e in r.json()["detail"]]
    assert where == [("line", 3, "price"), ("line", 4, "stock"), ("line", 5, "sku")], r.text
    assert "more than two decimals" in r.json()["detail"][0]["msg"]
    assert catalog(world) == before  # all or nothing: the earlier catalog stands, untouched
    # Only once every line is good does the kit check run: the other kit's line is refused by its line.
    r = world.ops.post("/api/v1/kits/alpha/catalog", content=GOOD + "0400000000039,Cap,9,20,3,beta,FEST25,,\n",
                       headers=CSV)
    assert r.status_code == 422 and [e["loc"] for e in r.json()["detail"]] == [["body", "line", 5, "kit"]]
    assert catalog(world) == before
    assert world.ops.post("/api/v1/kits/alpha/catalog", content=b"sku,name\n\xff\n", headers=CSV).status_code == 400
    assert world.ops.post("/api/v1/kits/alpha/catalog", content="<xml/>",
                          headers={"Content-Type": "application/xml"}).status_code == 415
    r = world.ops.post("/api/v1/kits/alpha/catalog", content=HEADER, headers=CSV)
    assert r.status_code == 422 and "no products" in r.json()["detail"][0]["msg"]
    assert catalog(world) == before
    # Every refusal is counted by why, for /metrics.
    delta = {k: v - counted.get(k, 0) for k, v in retail_metrics.CHANGES.items() if v != counted.get(k, 0)}
    assert delta == {"imported": 1, "lines": 2, "kit": 1, "body": 2}
    assert 'popkit_catalog_changes_total{outcome="kit"}' in retail_metrics.render_catalog_metrics()


def test_a_price_change_is_a_new_version_and_the_old_one_is_kept(world):
    assert world.ops.post("/api/v1/kits/alpha/catalog", content=GOOD, headers=CSV).status_code == 200
    # Re-import: one price changed, one stock changed, one product left out.
    again = HEADER + ("0400000000015,Tee,22.00,20,30,alpha,FEST25,black,M\n"
                      "0400000000022,Tee,20.00,20,10,alpha,FEST25,black,L\n")
    r = world.crew.post("/api/v1/kits/alpha/catalog", content=again, headers=CSV)
    assert r.status_code == 200, r.text
    b = r.json()
    assert (b["repriced"], b["updated"], b["removed"], b["added"]) == (
        [{"event": "FEST25", "sku": "0400000000015"}], [{"event": "FEST25", "sku": "0400000000022"}],
        [{"event": "FEST25", "sku": "TOTE-NAT"}], [])
    got = catalog(world)
    assert set(got) == {"0400000000015", "0400000000022"}
    tee = got["0400000000015"]["prices"]
    assert [(v["version"], v["price"]) for v in tee] == [(1, 2000), (2, 2200)] and tee[1]["from_ms"] >= tee[0]["from_ms"]
    assert [v["version"] for v in got["0400000000022"]["prices"]] == [1] and got["0400000000022"]["stock"] == 10
    # The removed product keeps its history for the orders sold at its price.
    tote = RetailStore(world.store.engine).product("alpha", "FEST25", "TOTE-NAT")
    assert tote is not None and tote.price == 1250
    # PUT: a new version; the tax rate kept unless given; more than two decimals refused.
    r = world.crew.put("/api/v1/kits/alpha/catalog/0400000000015/price", json={"price": "19.90", "tax_rate": "7"})
    assert r.status_code == 200, r.text
    assert [(v["version"], v["price"], v["tax_bp"]) for v in r.json()["prices"]] == [
        (1, 2000, 2000), (2, 2200, 2000), (3, 1990, 700)]
    r = world.ops.put("/api/v1/kits/alpha/catalog/0400000000015/price", json={"price": "19.999"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "price"]
    r = world.ops.put("/api/v1/kits/alpha/catalog/0400000000015/price", json={"price": "18", "from_ms": 5})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "from_ms"]
    assert world.ops.put("/api/v1/kits/alpha/catalog/TOTE-NAT/price", json={"price": "1"}).status_code == 404
    assert world.ops.put("/api/v1/kits/alpha/catalog/NOPE/price", json={"price": "1"}).status_code == 404
    assert len(catalog(world)["0400000000015"]["prices"]) == 3  # the refusals added nothing
    # Re-importing the old sheet brings the tote back and reprices the tee again (version 4).
    r = world.ops.post("/api/v1/kits/alpha/catalog", content=GOOD, headers=CSV)
    assert r.json()["added"] == [] and {"event": "FEST25", "sku": "TOTE-NAT"} in r.json()["updated"]
    assert [v["price"] for v in catalog(world)["0400000000015"]["prices"]] == [2000, 2200, 1990, 2000]


def test_a_sku_in_two_events_needs_the_event_to_be_repriced(world):
    two = GOOD + "0400000000015,Tee,25.00,20,5,alpha,WINTER,black,M\n"
    assert world.ops.post("/api/v1/kits/alpha/catalog", content=two, headers=CSV).status_code == 200
    assert world.ops.put("/api/v1/kits/alpha/catalog/0400000000015/price", json={"price": "1"}).status_code == 409
    r = world.ops.put("/api/v1/kits/alpha/catalog/0400000000015/price", json={"price": "24", "event": "WINTER"})
    assert r.status_code == 200 and (r.json()["event"], r.json()["prices"][-1]["price"]) == ("WINTER", 2400)
    assert [v["price"] for v in catalog(world, event="WINTER")["0400000000015"]["prices"]] == [2500, 2400]
    assert [v["price"] for v in catalog(world, event="FEST25")["0400000000015"]["prices"]] == [2000]
    # An import naming one event leaves the other event's catalog alone.
    assert world.ops.post("/api/v1/kits/alpha/catalog", content=GOOD, headers=CSV).json()["removed"] == []
    assert set(catalog(world, event="WINTER")) == {"0400000000015"}


def test_the_csv_export_reads_back_as_the_same_catalog_and_reimports_unchanged(world):
    assert world.ops.post("/api/v1/kits/alpha/catalog", content=GOOD, headers=CSV).status_code == 200
    world.ops.put("/api/v1/kits/alpha/catalog/TOTE-NAT/price", json={"price": "11.00"})
    r = world.crew.get("/api/v1/kits/alpha/catalog.csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    products, errors = parse_catalog_csv(r.text)
    assert errors == []
    now = {p["sku"]: p for p in catalog(world).values()}
    assert {(p.sku, p.name, p.price, p.tax_bp, p.stock, tuple(sorted(p.variants.items()))) for p in products} == {
        (s, p["name"], p["prices"][-1]["price"], p["prices"][-1]["tax_bp"], p["stock"],
         tuple(sorted(p["variants"].items()))) for s, p in now.items()}
    r = world.ops.post("/api/v1/kits/alpha/catalog", content=r.text, headers=CSV)
    assert r.status_code == 200 and len(r.json()["unchanged"]) == 3 and r.json()["repriced"] == []
    # The JSON form is accepted as well, and what GET gives is that form.
    doc = world.ops.get("/api/v1/kits/alpha/catalog").json()
    r = world.ops.post("/api/v1/kits/alpha/catalog", json=doc)
    assert r.status_code == 200 and len(r.json()["unchanged"]) == 3
    doc["products"][0]["kit"] = "beta"
    r = world.ops.post("/api/v1/kits/alpha/catalog", json=doc)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "products", 0, "kit"]


def test_crew_see_only_their_kits_and_venue_users_nothing_of_retail(world):
    assert world.ops.post("/api/v1/kits/alpha/catalog", content=GOOD, headers=CSV).status_code == 200
    for client, code in ((world.crew_b, 404), (world.venue, 403)):  # another kit is answered as no kit
        assert client.get("/api/v1/kits/alpha/catalog").status_code == code
        assert client.get("/api/v1/kits/alpha/catalog.csv").status_code == code
        assert client.post("/api/v1/kits/alpha/catalog", content=GOOD, headers=CSV).status_code == code
        assert client.put("/api/v1/kits/alpha/catalog/TOTE-NAT/price", json={"price": "1"}).status_code == code
    assert world.venue.get("/api/v1/kits/beta/catalog").status_code == 403
    assert world.crew_b.get("/api/v1/kits/beta/catalog").status_code == 200
    assert world.ops.get("/api/v1/kits/nope/catalog").status_code == 404
    assert [v["price"] for v in catalog(world)["TOTE-NAT"]["prices"]] == [1250]  # the refused PUTs changed nothing


def test_every_change_is_in_the_audit_log_and_refusals_are_not(world):
    world.crew.post("/api/v1/kits/alpha/catalog", content=GOOD, headers=CSV)
    world.crew.post("/api/v1/kits/alpha/catalog", content=HEADER, headers=CSV)  # 422: not a change
    world.ops.put("/api/v1/kits/alpha/catalog/TOTE-NAT/price", json={"price": "11"})
    world.crew_b.put("/api/v1/kits/alpha/catalog/TOTE-NAT/price", json={"price": "1"})  # 404
    log = [(e["by"], e["what"], e["target"]) for e in world.ops.get("/api/v1/audit").json()]
    assert log == [
        ("ops-olga", "PUT /api/v1/kits/{kit_id}/catalog/{sku}/price", "/api/v1/kits/alpha/catalog/TOTE-NAT/price"),
        ("crew-a", "POST /api/v1/kits/{kit_id}/catalog", "/api/v1/kits/alpha/catalog")]


@pytest.fixture
def served(tmp_path):
    import uvicorn

    store = Store.open(f"sqlite:///{tmp_path / 'fleet.db'}")
    store.registry.register_kit(parse_manifest(kit_toml("alpha", 1)))
    app = create_app(store)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, what="uvicorn up")
    yield type("F", (), dict(app=app, store=store, url=f"http://127.0.0.1:{port}", tmp=tmp_path))
    server.should_exit = True
    thread.join(10)
    store.close()


def test_popkit_retail_import_sends_the_catalog_to_the_fleet(served, capsys, monkeypatch):
    sheet = served.tmp / "catalog.csv"
    sheet.write_text(GOOD)

    def popkit(*argv: str) -> tuple[int, str, str]:
        code = main(["retail", "import", str(sheet), *argv])
        out = capsys.readouterr()
        return code, out.out, out.err

    monkeypatch.delenv("POPKIT_TOKEN", raising=False)
    code, _, err = popkit("--kit", "alpha", "--fleet", served.url)
    assert code == 1 and "POPKIT_TOKEN" in err
    monkeypatch.setenv("POPKIT_TOKEN", token_as(served.app, "crew-a", "crew", kits=["alpha"]))
    code, out, err = popkit("--kit", "alpha", "--fleet", served.url)
    assert code == 0, err
    assert "fleet: kit alpha, event FEST25: 3 added, 0 repriced" in out
    assert len(RetailStore(served.store.engine).catalog("alpha")) == 3
    sheet.write_text(GOOD.replace("12.50", "13.00"))
    code, out, _ = popkit("--kit", "alpha", "--fleet", served.url)
    assert code == 0 and "1 repriced" in out and "2 unchanged" in out
    sheet.write_text(GOOD.replace("12.50", "13.001"))  # refused locally, line by line: nothing sent
    code, _, err = popkit("--kit", "alpha", "--fleet", served.url)
    assert code == 1 and "line 4, price" in err and "nothing imported" in err
    sheet.write_text(GOOD)
    code, _, err = popkit("--kit", "beta", "--fleet", served.url)
    assert code == 1 and "not beta" in err
    monkeypatch.setenv("POPKIT_TOKEN", token_as(served.app, "crew-b", "crew", kits=["beta"]))
    code, _, err = popkit("--kit", "alpha", "--fleet", served.url)
    assert code == 1 and "404" in err
    assert [v.price for v in RetailStore(served.store.engine).product("alpha", "FEST25", "TOTE-NAT").prices] == [1250, 1300]
