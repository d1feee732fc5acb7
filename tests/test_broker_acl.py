"""Provisioned credentials against a real Mosquitto over TLS: anonymous clients are refused, each
device is pinned to its own topic tree, a wildcard username gains nothing, a client that does not
verify the broker with the kit's CA gets nowhere, a revoked device is disconnected and refused."""

from __future__ import annotations

import ssl
import threading
import time
from pathlib import Path

import pytest

from kits.manifest import load_manifest
from popkit.broker import MosquittoBroker, mosquitto_binary
from plumbing.mqtt import client_for, new_client, tls_context
from popkit.provision import FLEET_USER, account, mosquitto_hash, provision
from tests.conftest import REPO, wait_until

KIT = "demo"
DOOR, LIGHTS, AGENT, PRINTER = "demo-scanner-1", "demo-lights-1", "demo-agent", "demo-printer"


class Session:
    """A paho client logged in (or refused) as one account: what it received, and the CONNACK."""

    def __init__(self, port: int, user: str | None, password: str | None, ca: Path | None, v5: bool = True):
        self.got: list[tuple[str, bytes]] = []
        self.rc = None
        self.suback: list = []
        self._connack = threading.Event()
        self.gone = threading.Event()
        self.c = new_client(f"t-{user or 'anon'}-{time.monotonic_ns() % 10**6}", v5=v5)
        if user is not None:
            self.c.username_pw_set(user, password)
        if ca is not None:
            self.c.tls_set_context(tls_context(str(ca)))
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = lambda *_a: self.gone.set()
        self.c.on_message = lambda _c, _u, m: self.got.append((m.topic, m.payload))
        self.c.on_subscribe = lambda _c, _u, _mid, codes, _p: self.suback.extend(codes)
        self.error: Exception | None = None
        try:  # the TLS handshake happens here: a broker the client does not trust fails it
            self.c.connect("127.0.0.1", port)
        except (OSError, ssl.SSLError) as exc:
            self.error = exc
            return
        self.c.loop_start()
        self._connack.wait(5)

    def _on_connect(self, _c, _u, _flags, rc, _p):
        self.rc = rc
        self._connack.set()

    @property
    def accepted(self) -> bool:
        return self.rc is not None and not self.rc.is_failure

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def kit(tmp_path):
    if mosquitto_binary() is None:
        pytest.fail("mosquitto is not installed (apt-get install mosquitto)")
    manifest = load_manifest(REPO / "kits" / "examples" / "demo.toml")
    creds = provision(manifest, tmp_path / "provision")
    broker = MosquittoBroker(data_dir=tmp_path / "broker", password_file=creds.passwd, acl_file=creds.acl,
                             tls=creds.tls).start()
    sessions: list[Session] = []

    def login(user, password=None):
        s = Session(broker.port, user, creds.accounts.get(user) if password is None else password, creds.tls.ca)
        sessions.append(s)
        return s

    yield manifest, creds, broker, login
    for s in sessions:
        s.close()
    broker.close()


def test_the_password_file_hash_is_mosquittos_own(tmp_path):
    """The $7$ hash we write is the one mosquitto_passwd writes: same salt, same password, same line."""
    import base64
    import shutil
    import subprocess

    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        pytest.skip("mosquitto_passwd not installed")
    f = tmp_path / "pw"
    subprocess.run([tool, "-c", "-b", str(f), "someone", "s3cret-tok"], check=True, capture_output=True)
    _, theirs = f.read_text().strip().split(":", 1)
    salt = base64.b64decode(theirs.split("$")[3])
    assert mosquitto_hash("s3cret-tok", salt) == theirs


def test_anonymous_and_wrong_passwords_and_wildcard_names_are_refused(kit):
    _manifest, creds, _broker, login = kit
    assert not login(None).accepted
    assert not login(account(KIT, DOOR), "not-the-password").accepted
    for name in ("+", "#", f"{KIT}.+", f"{KIT}.#"):  # no such account, whatever the password
        assert not login(name, creds.accounts[account(KIT, DOOR)]).accepted
    assert login(account(KIT, DOOR)).accepted  # and the real one gets in


def attempt(login, user: str, topic: str, payload: bytes) -> None:
    """A publish the ACL should deny, in a session of its own: Mosquitto may answer it by closing the
    connection (MQTT 3.1.1 allows either that or a silent drop), which must not end the test's sessions."""
    s = login(user)
    assert s.accepted
    s.c.publish(topic, payload, qos=1)
    time.sleep(0.2)


def test_a_device_is_pinned_to_its_own_tree(kit):
    _manifest, creds, _broker, login = kit
    fleet = login(FLEET_USER)
    door = login(account(KIT, DOOR))
    assert fleet.accepted and door.accepted
    fleet.c.subscribe(f"popkit/v1/{KIT}/+/+", qos=1)
    door.c.subscribe("#", qos=1)  # allowed to ask; it only ever gets what its ACL lets it read
    door.c.subscribe(f"popkit/v1/{KIT}/{LIGHTS}/cmd", qos=1)
    time.sleep(0.3)

    door.c.publish(f"popkit/v1/{KIT}/{DOOR}/state", b"door-own", qos=1).wait_for_publish(5)
    attempt(login, account(KIT, DOOR), f"popkit/v1/{KIT}/{LIGHTS}/state", b"door-posing-as-lights")
    attempt(login, account(KIT, DOOR), f"popkit/v1/{KIT}/{LIGHTS}/cmd", b"door-commanding-lights")
    attempt(login, account(KIT, DOOR), f"popkit/v1/{KIT}/{DOOR}/cmd", b"door-commanding-itself")
    attempt(login, account(KIT, DOOR), "popkit/v1/other-kit/x/state", b"door-in-another-kit")
    fleet.c.publish(f"popkit/v1/{KIT}/{LIGHTS}/cmd", b"fleet-to-lights", qos=1).wait_for_publish(5)
    fleet.c.publish(f"popkit/v1/{KIT}/{DOOR}/cmd", b"fleet-to-door", qos=1).wait_for_publish(5)

    wait_until(lambda: (f"popkit/v1/{KIT}/{DOOR}/state", b"door-own") in fleet.got, 5, what="the door's own state")
    wait_until(lambda: (f"popkit/v1/{KIT}/{DOOR}/cmd", b"fleet-to-door") in door.got, 5, what="the door's command")
    time.sleep(0.5)  # what must not arrive has had the time to
    assert {p for _, p in fleet.got} == {b"door-own"}, fleet.got  # none of the door's attempts got through
    assert door.got == [(f"popkit/v1/{KIT}/{DOOR}/cmd", b"fleet-to-door")], door.got  # nothing of the lights'


def test_the_agent_speaks_for_what_it_hosts_and_answers_the_doors(kit):
    _manifest, creds, _broker, login = kit
    fleet, agent, door = login(FLEET_USER), login(account(KIT, AGENT)), login(account(KIT, DOOR))
    fleet.c.subscribe(f"popkit/v1/{KIT}/+/+", qos=1)
    agent.c.subscribe(f"popkit/v1/{KIT}/+/claim", qos=0)
    door.c.subscribe(f"popkit/v1/{KIT}/{DOOR}/claimed", qos=0)
    time.sleep(0.3)
    agent.c.publish(f"popkit/v1/{KIT}/{PRINTER}/telemetry", b"printer-ok", qos=1).wait_for_publish(5)
    attempt(login, account(KIT, AGENT), f"popkit/v1/{KIT}/{LIGHTS}/telemetry", b"agent-posing-as-controller")
    door.c.publish(f"popkit/v1/{KIT}/{DOOR}/claim", b"may-i", qos=0)
    wait_until(lambda: (f"popkit/v1/{KIT}/{DOOR}/claim", b"may-i") in agent.got, 5, what="the claim at the hub")
    agent.c.publish(f"popkit/v1/{KIT}/{DOOR}/claimed", b"yes", qos=0)
    wait_until(lambda: (f"popkit/v1/{KIT}/{DOOR}/claimed", b"yes") in door.got, 5, what="the hub's answer")
    wait_until(lambda: (f"popkit/v1/{KIT}/{PRINTER}/telemetry", b"printer-ok") in fleet.got, 5, what="printer telemetry")
    time.sleep(0.5)
    assert b"agent-posing-as-controller" not in {p for _, p in fleet.got}


def test_a_scanner_in_till_mode_asks_the_agents_till_and_only_the_till_answers(kit):
    _manifest, _creds, _broker, login = kit
    fleet, agent, door, lights = (login(FLEET_USER), login(account(KIT, AGENT)), login(account(KIT, DOOR)),
                                  login(account(KIT, LIGHTS)))
    fleet.c.subscribe(f"popkit/v1/{KIT}/+/+", qos=0)
    agent.c.subscribe(f"popkit/v1/{KIT}/+/till", qos=0)
    door.c.subscribe(f"popkit/v1/{KIT}/{DOOR}/tilled", qos=0)
    lights.c.subscribe(f"popkit/v1/{KIT}/{DOOR}/tilled", qos=0)  # listening in on another device's answers
    time.sleep(0.3)
    attempt(login, account(KIT, LIGHTS), f"popkit/v1/{KIT}/{DOOR}/till", b"lights-posing-as-the-door")
    attempt(login, account(KIT, LIGHTS), f"popkit/v1/{KIT}/{LIGHTS}/till", b"lights-at-the-till")
    attempt(login, account(KIT, DOOR), f"popkit/v1/{KIT}/{DOOR}/tilled", b"door-answering-itself")
    door.c.publish(f"popkit/v1/{KIT}/{DOOR}/till", b"0400000000015", qos=0)
    wait_until(lambda: (f"popkit/v1/{KIT}/{DOOR}/till", b"0400000000015") in agent.got, 5, what="the scan at the till")
    agent.c.publish(f"popkit/v1/{KIT}/{DOOR}/tilled", b"line-added", qos=0)
    wait_until(lambda: (f"popkit/v1/{KIT}/{DOOR}/tilled", b"line-added") in door.got, 5, what="the till's answer")
    time.sleep(0.5)  # what must not arrive has had the time to
    assert agent.got == [(f"popkit/v1/{KIT}/{DOOR}/till", b"0400000000015")], agent.got
    assert door.got == [(f"popkit/v1/{KIT}/{DOOR}/tilled", b"line-added")], door.got
    assert lights.got == [] and fleet.got == [], "the till's questions and answers stay between the door and the agent"


def test_rotation_changes_one_device_and_a_revoked_one_is_disconnected_and_refused(kit, tmp_path):
    manifest, creds, broker, login = kit
    old_door, old_lights = creds.accounts[account(KIT, DOOR)], creds.accounts[account(KIT, LIGHTS)]
    door = login(account(KIT, DOOR))  # connected when the scanner is reported lost
    assert door.accepted
    again = provision(manifest, creds.folder, rotate=(LIGHTS,), revoke=(DOOR,))
    assert again.rotated == [account(KIT, LIGHTS)] and again.revoked == [account(KIT, DOOR)]
    assert again.accounts[account(KIT, AGENT)] == creds.accounts[account(KIT, AGENT)]  # untouched
    assert again.accounts[account(KIT, LIGHTS)] != old_lights
    assert not again.device_file(DOOR).exists()
    broker.reload()
    assert door.gone.wait(5), "the revoked door's live session was not ended"
    wait_until(lambda: not login(account(KIT, DOOR), old_door).accepted, 5, what="the revoked door refused")
    assert not login(account(KIT, LIGHTS), old_lights).accepted
    assert login(account(KIT, LIGHTS), again.accounts[account(KIT, LIGHTS)]).accepted
    assert login(account(KIT, AGENT), again.accounts[account(KIT, AGENT)]).accepted
    # nothing secret is readable by others
    for path in (again.passwd, again.acl, again.folder / "credentials.json", again.device_file(LIGHTS)):
        assert path.stat().st_mode & 0o077 == 0, path


def _raw_tls_connect(port: int, ctx: ssl.SSLContext) -> str:
    """Open a TLS connection to the broker; return 'ok' or why the handshake failed."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            with ctx.wrap_socket(sock, server_hostname="127.0.0.1"):
                return "ok"
        except ssl.SSLCertVerificationError as exc:
            return f"verify: {exc.verify_message}"


def test_only_a_client_holding_the_kits_ca_gets_through_tls(kit, tmp_path):
    manifest, creds, broker, login = kit
    assert _raw_tls_connect(broker.port, tls_context(str(creds.tls.ca))) == "ok"
    # the system's CAs never signed the kit's broker
    assert _raw_tls_connect(broker.port, tls_context()).startswith("verify:")
    # another kit's CA (an attacker's broker would have one like it) is not this kit's
    other = provision(manifest, tmp_path / "elsewhere")
    assert other.tls.ca.read_bytes() != creds.tls.ca.read_bytes()
    assert _raw_tls_connect(broker.port, tls_context(str(other.tls.ca))).startswith("verify:")
    # plain MQTT on the TLS port: no CONNACK, with the right password or not
    plain = Session(broker.port, account(KIT, DOOR), creds.accounts[account(KIT, DOOR)], ca=None)
    assert not plain.accepted
    plain.close()
    wrong_ca = Session(broker.port, account(KIT, DOOR), creds.accounts[account(KIT, DOOR)], ca=other.tls.ca)
    assert not wrong_ca.accepted and isinstance(wrong_ca.error, ssl.SSLCertVerificationError), wrong_ca.error
    wrong_ca.close()
    assert login(account(KIT, DOOR)).accepted


def test_a_provisioned_account_file_is_all_a_client_needs(kit):
    """What the agent and the fleet do: an mqtts:// URL naming the account file, no password anywhere."""
    _manifest, creds, broker, _login = kit
    got = threading.Event()
    for who, file in (("agent", creds.device_file(AGENT)), ("fleet", creds.fleet_file)):
        assert creds.accounts[FLEET_USER if who == "fleet" else account(KIT, AGENT)] not in str(file)
        url = f"mqtts://127.0.0.1:{broker.port}?account={file}"
        client, target = client_for(url, f"t-{who}")
        client.on_connect = lambda c, _u, _f, rc, _p: rc.is_failure or got.set()
        client.connect(target.host, target.port)
        client.loop_start()
        try:
            assert got.wait(5), f"the {who} did not log in with its account file"
        finally:
            client.disconnect()
            client.loop_stop()
        got.clear()


def test_mqtt_urls_name_accounts_and_logs_never_show_a_password(tmp_path):
    from plumbing.mqtt import parse_mqtt_url, read_account, redacted

    t = parse_mqtt_url("mqtts://broker.kit:8883?account=/p/devices/d.json&ca=/p/tls/ca.crt")
    assert (t.host, t.port, t.tls, t.account, t.ca) == ("broker.kit", 8883, True, "/p/devices/d.json", "/p/tls/ca.crt")
    assert redacted("mqtts://door:hunter2-long@broker.kit:8883") == "mqtts://door:***@broker.kit:8883"
    assert redacted("mqtt://broker.kit:1883") == "mqtt://broker.kit:1883"
    bad = tmp_path / "bad.json"
    for text, why in (("{", "not an account"), ('{"broker": {"user": "x"}}', "not an account")):
        bad.write_text(text)
        with pytest.raises(ValueError, match=why):
            read_account(str(bad))
    with pytest.raises(ValueError, match="cannot read"):
        read_account(str(tmp_path / "missing.json"))


def test_rotating_a_device_the_agent_speaks_for_says_why_it_cannot(tmp_path):
    from popkit.provision import ProvisionError

    manifest = load_manifest(REPO / "kits" / "examples" / "demo.toml")
    provision(manifest, tmp_path / "p", tls=False)
    with pytest.raises(ProvisionError, match="no broker account of its own: the agent 'demo-agent' speaks for it"):
        provision(manifest, tmp_path / "p", rotate=(PRINTER,), tls=False)


def test_device_files_carry_wifi_and_event_keys_and_keep_them_across_rotation(tmp_path):
    import json

    from kits.tickets import EventKey
    from popkit.cli import main

    key = EventKey.generate("GIG-1")
    key_file = tmp_path / "GIG-1.key"
    key.save(key_file)
    key_file.chmod(0o600)
    wifi = tmp_path / "wifi.json"
    wifi.write_text(json.dumps({"ssid": "venue-crew", "password": "w1f1-pass-phrase"}))
    out = tmp_path / "p"
    args = ["kit", "provision", str(REPO / "kits" / "examples" / "demo.toml"), "--out", str(out)]
    assert main([*args, "--wifi", str(wifi), "--event-key", str(key_file)]) == 0
    assert main([*args, "--rotate", LIGHTS]) == 0  # no --wifi, no keys this time: both kept
    door = json.loads((out / "devices" / f"{DOOR}.json").read_text())
    lights = json.loads((out / "devices" / f"{LIGHTS}.json").read_text())
    agent = json.loads((out / "devices" / f"{AGENT}.json").read_text())
    assert door["wifi"] == lights["wifi"] == {"ssid": "venue-crew", "password": "w1f1-pass-phrase"}
    assert door["gate"]["events"] == [{"event": "GIG-1", "key": key.secret.hex()}]
    assert "gate" not in lights and "wifi" not in agent and "gate" not in agent
    wifi.write_text("[1, 2]")
    assert main([*args, "--wifi", str(wifi)]) == 3


def test_the_kits_clock_comes_from_its_agent_only_and_every_esp32_hears_it(kit):
    _manifest, _creds, _broker, login = kit
    agent, door, lights = login(account(KIT, AGENT)), login(account(KIT, DOOR)), login(account(KIT, LIGHTS))
    topic = f"popkit/v1/{KIT}/time"
    door.c.subscribe(topic, qos=0)
    lights.c.subscribe(topic, qos=0)
    time.sleep(0.3)
    attempt(login, account(KIT, DOOR), topic, b"door-setting-the-kits-clock")  # a device must not
    agent.c.publish(topic, b"the-pis-time", qos=0)
    wait_until(lambda: (topic, b"the-pis-time") in door.got and (topic, b"the-pis-time") in lights.got, 5,
               what="the agent's time at both ESP32s")
    time.sleep(0.5)
    assert door.got == [(topic, b"the-pis-time")] and lights.got == [(topic, b"the-pis-time")]


def test_the_kits_ticket_list_is_written_by_its_agent_only_and_read_by_its_scanners(kit):
    _manifest, _creds, _broker, login = kit
    agent, door, lights = login(account(KIT, AGENT)), login(account(KIT, DOOR)), login(account(KIT, LIGHTS))
    topic = f"popkit/v1/{KIT}/revocations"
    door.c.subscribe(topic, qos=1)
    lights.c.subscribe(topic, qos=1)
    agent.c.subscribe([(f"popkit/v1/{KIT}/+/config", 1), (f"popkit/v1/{KIT}/revoke", 1)])
    wait_until(lambda: len(door.suback) == 1 and len(agent.suback) == 2, 5, what="the SUBACKs")
    assert not door.suback[0].is_failure and not any(rc.is_failure for rc in agent.suback)
    attempt(login, account(KIT, DOOR), topic, b"door-revoking-on-its-own")  # a door must not write the list
    agent.c.publish(topic, b"the-kits-list", qos=1, retain=True)
    wait_until(lambda: (topic, b"the-kits-list") in door.got, 5, what="the kit's list at the door")
    time.sleep(0.5)
    assert door.got == [(topic, b"the-kits-list")]
    assert lights.got == []  # the lighting controller holds no tickets
