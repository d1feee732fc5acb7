"""The kit broker's bridge to the fleet broker, as provisioned: two real Mosquittos, TLS both, the
bridge logged in at the fleet broker as the kit's own bridge account and held to the kit's topics.

What ops would see: a door on the kit's broker reaches the fleet on the fleet's broker and the
fleet's command reaches the door; a bridge with a wrong password, or one that does not trust the
fleet broker's CA, carries nothing; the bridge account cannot speak for another kit."""

from __future__ import annotations

import time

import pytest

from kits.manifest import load_manifest
from popkit.broker import MosquittoBroker, free_port, mosquitto_binary
from popkit.provision import FLEET_USER, account, bridge_account, provision
from tests.conftest import DEMO_KIT, wait_until
from tests.test_broker_acl import Session

KIT, DOOR = "demo", "demo-scanner-1"


@pytest.fixture
def two_brokers(tmp_path):
    """Provision once for the fleet broker (its TLS, its accounts) and once for the kit broker with a
    bridge to it; returns a starter so a test may spoil the bridge config first."""
    if mosquitto_binary() is None:
        pytest.fail("mosquitto is not installed (apt-get install mosquitto)")
    manifest = load_manifest(DEMO_KIT)
    fleet_port, kit_port = free_port(), free_port()
    fleet_side = provision(manifest, tmp_path / "fleet-side", broker_port=fleet_port)
    kit_side = provision(manifest, tmp_path / "kit-side", broker_port=kit_port,
                         bridge_to=("127.0.0.1", fleet_port, fleet_side.tls.ca))
    # the fleet broker knows the kit's bridge account (ops add it from the kit's provisioning)
    fleet_side = provision(manifest, fleet_side.folder, broker_port=fleet_port,
                           bridge_to=("127.0.0.1", fleet_port, fleet_side.tls.ca))
    brokers = []

    def start(bridge_password: str | None = None, bridge_ca=None):
        conf = kit_side.conf_dir / "bridge.conf"
        text = conf.read_text()
        # the bridge's password as the fleet broker knows it (two folders here: one per broker)
        text = text.replace(kit_side.accounts[bridge_account(KIT)],
                            bridge_password or fleet_side.accounts[bridge_account(KIT)])
        if bridge_ca is not None:
            text = text.replace(str(fleet_side.tls.ca.resolve()), str(bridge_ca))
        conf.write_text(text)
        fleet_broker = MosquittoBroker(port=fleet_port, data_dir=tmp_path / "fleet-broker", password_file=fleet_side.passwd,
                                       acl_file=fleet_side.acl, tls=fleet_side.tls).start()
        kit_broker = MosquittoBroker(port=kit_port, data_dir=tmp_path / "kit-broker", password_file=kit_side.passwd,
                                     acl_file=kit_side.acl, tls=kit_side.tls,
                                     extra_conf=f"include_dir {kit_side.conf_dir}\n").start()
        brokers.extend([fleet_broker, kit_broker])
        return fleet_broker, kit_broker

    yield fleet_side, kit_side, start
    for b in brokers:
        b.close()


def login(broker, creds, user):
    return Session(broker.port, user, creds.accounts[user], creds.tls.ca)


def test_the_bridge_carries_the_kit_both_ways_logged_in_as_itself(two_brokers):
    fleet_side, kit_side, start = two_brokers
    fleet_broker, kit_broker = start()
    wait_until(lambda: f"u'{bridge_account(KIT)}'" in fleet_broker.log(), 10, what="the bridge logged in")
    fleet = login(fleet_broker, fleet_side, FLEET_USER)
    door = login(kit_broker, kit_side, account(KIT, DOOR))
    assert fleet.accepted and door.accepted
    fleet.c.subscribe(f"popkit/v1/{KIT}/+/+", qos=1)
    door.c.subscribe(f"popkit/v1/{KIT}/{DOOR}/cmd", qos=1)
    wait_until(lambda: fleet.suback and door.suback, 10, what="both subscriptions in place")
    door.c.publish(f"popkit/v1/{KIT}/{DOOR}/state", b"door-up", qos=1)
    door.c.publish(f"popkit/v1/{KIT}/{DOOR}/claim", b"kit-local", qos=0)  # the hub's business only
    wait_until(lambda: (f"popkit/v1/{KIT}/{DOOR}/state", b"door-up") in fleet.got, 10, what="the door's state upstream")
    fleet.c.publish(f"popkit/v1/{KIT}/{DOOR}/cmd", b"fleet-cmd", qos=1)
    wait_until(lambda: (f"popkit/v1/{KIT}/{DOOR}/cmd", b"fleet-cmd") in door.got, 10, what="the fleet's command down")
    # the bridge account at the fleet broker: this kit's device channels, nothing else
    other = Session(fleet_broker.port, bridge_account(KIT), fleet_side.accounts[bridge_account(KIT)], fleet_side.tls.ca)
    other.c.publish("popkit/v1/other-kit/x/state", b"posing", qos=1)
    time.sleep(0.5)
    assert {p for _, p in fleet.got} == {b"door-up"}, fleet.got


@pytest.mark.parametrize("spoil", ["wrong password", "untrusted CA"])
def test_a_bridge_the_fleet_broker_cannot_trust_or_that_cannot_trust_it_carries_nothing(two_brokers, tmp_path, spoil):
    fleet_side, kit_side, start = two_brokers
    if spoil == "wrong password":
        fleet_broker, kit_broker = start(bridge_password="not-the-bridge-password-at-all")
    else:
        fleet_broker, kit_broker = start(bridge_ca=kit_side.tls.ca.resolve())  # the kit's own CA, not the fleet's
    fleet = login(fleet_broker, fleet_side, FLEET_USER)
    door = login(kit_broker, kit_side, account(KIT, DOOR))
    fleet.c.subscribe(f"popkit/v1/{KIT}/+/+", qos=1)
    wait_until(lambda: fleet.suback, 10, what="the fleet's subscription in place")
    for _ in range(5):
        door.c.publish(f"popkit/v1/{KIT}/{DOOR}/state", b"door-up", qos=1)
        time.sleep(0.4)
    assert fleet.got == []
    if spoil == "wrong password":
        wait_until(lambda: "not authorised" in fleet_broker.log(), 5, what="the fleet broker refusing the bridge")
    assert f"u'{bridge_account(KIT)}'" not in fleet_broker.log(), "the bridge got in"


def test_the_kit_broker_runs_on_the_config_provision_wrote_and_bridges_to_the_fleet(tmp_path):
    """What the Pi runs: `mosquitto -c <folder>/mosquitto/mosquitto.conf`, nothing added by a test."""
    import subprocess

    from popkit.broker import wait_for_port
    from tests.bridged import start_bridged

    net = start_bridged(tmp_path / "net", DEMO_KIT)
    # Only the fleet broker is wanted: the other kit broker's bridge has the same client id, and two
    # bridges of one kit would take the session from each other.
    net.kit_broker.close()
    logins = net.fleet_broker.log().count(f"u'{bridge_account(KIT)}'")
    port = free_port()
    kit_side = provision(load_manifest(DEMO_KIT), tmp_path / "pi", broker_port=port, broker_data=tmp_path / "pi-data",
                         bridge_to=("127.0.0.1", net.fleet_broker.port, net.fleet_side.tls.ca))
    conf = kit_side.conf_dir / "bridge.conf"  # the fleet side's bridge password, as ops would hand it over
    conf.write_text(conf.read_text().replace(kit_side.accounts[bridge_account(KIT)],
                                             net.fleet_side.accounts[bridge_account(KIT)]))
    text = kit_side.broker_conf.read_text()
    assert "max_queued_messages 100000" in text and "allow_anonymous false" in text
    (tmp_path / "pi-data").mkdir()
    pi = subprocess.Popen([mosquitto_binary(), "-c", str(kit_side.broker_conf)], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
    try:
        wait_for_port(port)
        door = login(type("B", (), {"port": port})(), kit_side, account(KIT, DOOR))
        anon = Session(port, None, None, kit_side.tls.ca)
        assert door.accepted and not anon.accepted
        fleet = login(net.fleet_broker, net.fleet_side, FLEET_USER)
        fleet.c.subscribe(f"popkit/v1/{KIT}/{DOOR}/state", qos=1)
        # Subscribed before the door publishes (a busy CI machine sent the SUBSCRIBE late once, and the
        # bridged message found no one to deliver to).
        wait_until(lambda: fleet.suback, 10, what="the fleet's subscription in place")
        wait_until(lambda: net.fleet_broker.log().count(f"u'{bridge_account(KIT)}'") > logins, 15,
                   what="the Pi's broker bridged in")
        door.c.publish(f"popkit/v1/{KIT}/{DOOR}/state", b"from-the-pi", qos=1)
        wait_until(lambda: (f"popkit/v1/{KIT}/{DOOR}/state", b"from-the-pi") in fleet.got, 10, what="the state upstream")
    finally:
        pi.terminate()
        pi.wait(10)
        net.close()
