"""The wire contract: one definition, exported schemas kept in step, clear errors for bad payloads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kits.contract import (
    BatteryTelemetry,
    ContractError,
    Receipt,
    State,
    decode,
    encode,
    json_schemas,
    parse_topic,
    ranges,
    topic,
)
from kits.manifest import ManifestError, load_manifest, parse_manifest

REPO = Path(__file__).resolve().parent.parent


def test_exported_json_schemas_match_the_models():
    """Fails when a model changed and `popkit contract export` was not run."""
    for channel, schema in json_schemas().items():
        path = REPO / "docs" / "protocol" / f"{channel}.schema.json"
        assert path.exists(), f"{path} missing: run `popkit contract export docs/protocol`"
        assert json.loads(path.read_text()) == schema, f"{path} is stale: run `popkit contract export docs/protocol`"


def test_topics_round_trip_and_refuse_wildcards():
    assert parse_topic(topic("demo", "demo-power", "telemetry")) == ("demo", "demo-power", "telemetry")
    for bad in ("popkit/v1/demo/+/telemetry", "popkit/v1/demo/#/state", "popkit/v2/demo/x/state",
                "popkit/v1/demo/x/nonsense", "popkit/v1/demo/x/y/state", "other"):
        with pytest.raises(ContractError) as err:
            parse_topic(bad)
        assert err.value.reason == "unknown_topic"
    with pytest.raises(ValueError):
        topic("demo", "a/b", "state")


def test_payload_errors_name_the_field():
    good = encode(BatteryTelemetry(boot="ab12", seq=1, ts=5, source="sim", v=12.0, i=-1.0, soc=50.0))
    assert decode("telemetry", good).soc == 50.0
    cases = {
        b"": "bad_json",
        b"[1,2": "bad_json",
        b'{"boot":"ab12","seq":1,"ts":5,"kind":"battery","source":"sim","v":12,"i":1,"soc":150}': "invalid",
        b'{"boot":"ab12","seq":-1,"ts":5,"kind":"device","uptime_s":1}': "invalid",
        b'{"boot":"ab12","seq":1,"ts":5,"kind":"toaster"}': "invalid",
        b'{"boot":"AB12","seq":1,"ts":5,"kind":"device","uptime_s":1}': "invalid",
    }
    for payload, reason in cases.items():
        with pytest.raises(ContractError) as err:
            decode("telemetry", payload)
        assert err.value.reason == reason, payload
    with pytest.raises(ContractError) as err:
        decode("telemetry", b'{"boot":"ab12","seq":1,"ts":5,"kind":"battery","source":"sim","v":12,"i":1,"soc":150}')
    assert "soc" in str(err.value)


def test_state_and_receipt_shapes():
    s = decode("state", encode(State(boot="ab12", seq=0, ts=1, online=False, role="scanner", reason="lwt")))
    assert s.online is False and s.reason == "lwt"
    r = decode("receipt", encode(Receipt(boot="ab12", seqs=ranges([5, 1, 2, 3, 9]), ts=1)))
    assert r.seqs == [(1, 3), (5, 5), (9, 9)]


def test_a_state_may_carry_its_update_news_and_a_bad_one_is_refused():
    base = '{"boot":"ab12","seq":0,"ts":1,"online":true,"role":"scanner","fw":"scanner-0.3.1"'
    assert decode("state", (base + "}").encode()).update is None  # an older device, or the agent
    s = decode("state", (base + ',"update":{"state":"rolled_back","why":"never healthy in 300 s"}}').encode())
    assert s.update is not None and s.update.state == "rolled_back" and s.update.why == "never healthy in 300 s"
    s = decode("state", (base + ',"update":{"state":"committed","fw":"scanner-0.3.2"}}').encode())
    assert s.update is not None and s.update.fw == "scanner-0.3.2" and s.update.why is None
    for state in ("trial", "safe_mode", "failed"):
        assert decode("state", (base + ',"update":{"state":"%s"}}' % state).encode()).update.state == state
    bad = {
        "a state the contract does not know": '{"state":"bricked"}',
        "a why over 120 characters": '{"state":"failed","why":"%s"}' % ("x" * 121),
        "no state": '{"why":"x"}',
        "an unknown field": '{"state":"trial","mode":"safe"}',
    }
    for what, update in bad.items():
        with pytest.raises(ContractError) as err:
            decode("state", (base + ',"update":' + update + "}").encode())
        assert err.value.reason == "invalid" and "update" in str(err.value), what
    why = "y" * 120
    assert decode("state", (base + ',"update":{"state":"failed","why":"%s"}}' % why).encode()).update.why == why


def test_the_example_kits_load():
    for path in (REPO / "kits" / "examples").glob("*.toml"):
        manifest = load_manifest(path)
        assert manifest.device(manifest.agent).role == "agent"


def test_a_bad_manifest_names_the_file_and_the_field(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text('id = "Bad Kit"\nname = "x"\n[[devices]]\nid = "p1"\nrole = "toaster"\n')
    with pytest.raises(ManifestError) as err:
        load_manifest(path)
    text = str(err.value)
    assert "broken.toml" in text and "id" in text and "devices[0] ('p1').role" in text
    with pytest.raises(ManifestError, match="not valid TOML"):
        parse_manifest("id = [", "x.toml")
    with pytest.raises(ManifestError, match="used twice"):
        parse_manifest('id="k"\nname="n"\n[[devices]]\nid="a"\nrole="scanner"\n[[devices]]\nid="a"\nrole="scanner"\n')


@pytest.mark.parametrize("device, expected", [
    ('id="p"\nrole="printer"\nbus="ble:AA:BB:CC:DD:EE:FF"', "devices[0] ('p'): bus: a printer takes serial:..., not 'ble:AA:BB:CC:DD:EE:FF'"),
    ('id="p"\nrole="printer"', "devices[0] ('p'): bus: a printer takes serial:..., not None"),
    ('id="b"\nrole="powerbank"\nbus="ble:12:34"', "bus: ble needs a MAC address"),
    ('id="r"\nrole="light"\nbus="gpio:40"', "bus: gpio needs a BCM pin number 0..27"),
    ('id="k"\nrole="panel"\nbus="gpio"\npins={button=27}', "pins: a panel needs button, red, green, blue; missing red, green, blue"),
    ('id="s"\nrole="scanner"\nbus="serial:/dev/ttyS0"', "a scanner takes no bus"),
    ('id="p"\nrole="powerbank"\nbus="serial:/dev/ttyUSB0"\nexpect={min_soc=120}', "devices[0] ('p').expect.min_soc"),
    ('id="p"\nrole="powerbank"\nbus="serial:/dev/ttyUSB0"\nexpect={minsoc=50}', "devices[0] ('p').expect.minsoc: Extra inputs"),
])
def test_a_device_on_the_wrong_bus_or_with_bad_expectations_is_named(device, expected):
    with pytest.raises(ManifestError) as err:
        parse_manifest(f'id="k"\nname="n"\n[[devices]]\n{device}\n', "kit.toml")
    assert str(err.value).startswith("kit.toml: ") and expected in str(err.value), str(err.value)


def test_event_times_need_an_offset_and_an_order():
    with pytest.raises(ManifestError, match="ends needs a UTC offset"):
        parse_manifest('id="k"\nname="n"\n[event]\nends=2026-11-21T23:30:00\n', "kit.toml")
    with pytest.raises(ManifestError, match="doors_open must be before ends"):
        parse_manifest('id="k"\nname="n"\n[event]\ndoors_open=2026-11-21T23:30:00Z\nends=2026-11-21T19:00:00Z\n')
    m = parse_manifest('id="k"\nname="n"\n[event]\ndoors_open=2026-11-21T19:00:00+01:00\nends=2026-11-21T23:30:00+01:00\n')
    assert (m.event.ends - m.event.doors_open).total_seconds() == 4.5 * 3600
