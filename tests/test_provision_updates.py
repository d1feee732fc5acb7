"""Provisioning for field updates: the agent may write every ESP32's update topic at the kit broker,
each ESP32 reads only its own, the topic is never bridged to the fleet; the Pi's agent.env names the
update server's kit address and, given ``--release-pub``, the release key it checks bundles with
(kept for the next provisioning). Against a real Mosquitto over TLS with the provisioned ACL."""

from __future__ import annotations

import json
import re
import time

import pytest

from kits.manifest import load_manifest
from kits.release import new_private_key, public_key_of
from popkit.broker import MosquittoBroker, mosquitto_binary
from popkit.cli import main
from popkit.provision import FLEET_USER, account, bridge_conf, bridge_rules, provision
from tests.conftest import DEMO_KIT, wait_until
from tests.test_broker_acl import Session

KIT, DOOR, LIGHTS, AGENT = "demo", "demo-scanner-1", "demo-lights-1", "demo-agent"


def _provision(tmp_path, *extra: str) -> tuple[int, object]:
    out = tmp_path / "provision"
    return main(["kit", "provision", str(DEMO_KIT), "--out", str(out), *extra]), out


def _env(out) -> dict[str, str]:
    text = (out / "pi" / "root" / "etc" / "popkit" / "agent.env").read_text()
    return dict(re.findall(r"^([A-Z_]+)=(.*)$", text, re.M))


def _plan(out) -> dict[str, dict]:
    return {e["path"]: e for e in json.loads((out / "pi" / "files.json").read_text())["files"]}


def test_the_pi_gets_the_update_server_address_the_release_key_and_the_self_update_unit(tmp_path, capsys):
    pub = public_key_of(new_private_key())
    (tmp_path / "release.pub").write_text(pub.hex() + "\n")
    code, out = _provision(tmp_path, "--kit-address", "10.42.0.1/24", "--release-pub", str(tmp_path / "release.pub"))
    assert code == 0, capsys.readouterr().err
    env = _env(out)
    assert env["POPKIT_UPDATE_LISTEN"] == "10.42.0.1"  # the kit network's address, where the ESP32s reach the Pi
    assert env["POPKIT_RELEASE_PUBKEY"] == "/etc/popkit/release.pub"
    plan = _plan(out)
    assert (out / "pi" / "root" / "etc" / "popkit" / "release.pub").read_text().strip() == pub.hex()
    assert {k: plan["/etc/popkit/release.pub"][k] for k in ("owner", "group", "mode")} == {
        "owner": "root", "group": "popkit", "mode": "0644"}
    unit = "/etc/systemd/system/popkit-agent-update@.service"
    assert plan[unit]["mode"] == "0644" and "restart" not in plan[unit]
    assert "popkit-agent-update@" in (out / "pi" / "root" / "etc" / "polkit-1" / "rules.d" /
                                      "50-popkit-poweroff.rules").read_text()

    # provisioning again (a rotation) without the option keeps the key on the Pi
    code, out = _provision(tmp_path, "--kit-address", "10.42.0.1/24", "--rotate", DOOR)
    assert code == 0
    assert _env(out)["POPKIT_RELEASE_PUBKEY"] == "/etc/popkit/release.pub"
    assert "/etc/popkit/release.pub" in _plan(out)


def test_without_a_release_key_the_agent_env_names_none_and_a_bad_key_file_is_refused(tmp_path, capsys):
    code, out = _provision(tmp_path, "--network", "router", "--kit-address", "192.168.8.2/24")
    assert code == 0
    env = _env(out)
    assert env["POPKIT_UPDATE_LISTEN"] == "192.168.8.2" and "POPKIT_RELEASE_PUBKEY" not in env
    assert "/etc/popkit/release.pub" not in _plan(out)

    (tmp_path / "bad.pub").write_text("not a key")
    code, _ = _provision(tmp_path, "--release-pub", str(tmp_path / "bad.pub"))
    err = capsys.readouterr().err
    assert code == 3 and "--release-pub" in err and "64 hex characters" in err, err
    code, _ = _provision(tmp_path, "--release-pub", str(tmp_path / "missing.pub"))
    err = capsys.readouterr().err
    assert code == 3 and "cannot read it" in err, err


def test_the_update_channel_is_never_bridged():
    ca = "/tmp/fleet-ca.crt"
    conf = bridge_conf(KIT, "pw", "fleet.example.org", 8883, ca)
    assert "/update" not in conf
    assert not [r for r in bridge_rules(KIT) if r.endswith("/update")]


@pytest.fixture
def kit(tmp_path):
    if mosquitto_binary() is None:
        pytest.fail("mosquitto is not installed (apt-get install mosquitto)")
    creds = provision(load_manifest(DEMO_KIT), tmp_path / "provision")
    broker = MosquittoBroker(data_dir=tmp_path / "broker", password_file=creds.passwd, acl_file=creds.acl,
                             tls=creds.tls).start()
    sessions: list[Session] = []

    def login(user):
        s = Session(broker.port, user, creds.accounts[user], creds.tls.ca)
        sessions.append(s)
        assert s.accepted
        return s

    yield login
    for s in sessions:
        s.close()
    broker.close()


def test_the_agent_offers_to_each_esp32_which_reads_only_its_own_offer(kit):
    login = kit
    door, lights, fleet = login(account(KIT, DOOR)), login(account(KIT, LIGHTS)), login(FLEET_USER)
    door.c.subscribe(f"popkit/v1/{KIT}/+/update", qos=1)  # it may ask for all; it gets its own only
    lights.c.subscribe(f"popkit/v1/{KIT}/{LIGHTS}/update", qos=1)
    fleet.c.subscribe(f"popkit/v1/{KIT}/+/update", qos=1)
    wait_until(lambda: door.suback and lights.suback and fleet.suback, 5, what="the subscriptions")

    agent = login(account(KIT, AGENT))
    agent.c.publish(f"popkit/v1/{KIT}/{DOOR}/update", b"offer-door", qos=1, retain=True).wait_for_publish(5)
    agent.c.publish(f"popkit/v1/{KIT}/{LIGHTS}/update", b"offer-lights", qos=1, retain=True).wait_for_publish(5)
    wait_until(lambda: (f"popkit/v1/{KIT}/{DOOR}/update", b"offer-door") in door.got, 5, what="the door's offer")
    wait_until(lambda: (f"popkit/v1/{KIT}/{LIGHTS}/update", b"offer-lights") in lights.got, 5,
               what="the lights' offer")
    # a door may not make an offer (to itself or another device)
    rogue = login(account(KIT, DOOR))
    rogue.c.publish(f"popkit/v1/{KIT}/{LIGHTS}/update", b"rogue", qos=1)
    rogue.c.publish(f"popkit/v1/{KIT}/{DOOR}/update", b"rogue", qos=1)
    time.sleep(0.5)  # what must not arrive has had the time to
    assert door.got == [(f"popkit/v1/{KIT}/{DOOR}/update", b"offer-door")]
    assert lights.got == [(f"popkit/v1/{KIT}/{LIGHTS}/update", b"offer-lights")]
    assert fleet.got == []  # the fleet never sees the kit's offers: it told the agent
