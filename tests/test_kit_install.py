"""The kit's Pi as provisioned and installed: `popkit kit provision` writes every file the Pi needs
at its Pi path, `popkit kit install` puts them in place (twice changes nothing), and the kit
broker started from the installed files refuses anonymous clients and takes a device's login over TLS."""

from __future__ import annotations

import configparser
import json
import os
import re
import stat
from pathlib import Path

import pytest

from popkit.cli import main
from tests.conftest import DEMO_KIT, REPO
from tests.kitroot import probe_broker, probe_refusal, seed_root, snapshot

KIT = "demo"
SCANNER = "demo-scanner-1"
# Directives whose value is a file the Pi must have (Mosquitto, the agent's settings).
_PATH_KEYS = re.compile(r"^(certfile|keyfile|cafile|password_file|acl_file|bridge_cafile)\s+(\S+)", re.M)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="installing sets owners and creates users: root only")


def _provision(tmp_path: Path, *extra: str) -> Path:
    out = tmp_path / "provision"
    assert main(["kit", "provision", str(DEMO_KIT), "--out", str(out), *extra]) == 0
    return out


def _plan(out: Path) -> dict:
    return json.loads((out / "pi" / "files.json").read_text())


def _pi_text(out: Path, path: str) -> str:
    return (out / "pi" / "root" / path.lstrip("/")).read_text()


def _keyfile(out: Path) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(interpolation=None)
    cp.read_string(_pi_text(out, "/etc/NetworkManager/system-connections/popkit-kit.nmconnection"))
    return cp


def test_provisioned_pi_files_name_only_pi_paths(tmp_path):
    fleet_ca = tmp_path / "fleet-ca.crt"
    fleet_ca.write_text("-----BEGIN CERTIFICATE-----\n")
    out = _provision(tmp_path, "--bridge-to", "fleet.example.org:8883", "--bridge-ca", str(fleet_ca))
    plan = _plan(out)
    on_pi = {e["path"] for e in plan["files"]}
    assert on_pi >= {"/etc/mosquitto/conf.d/popkit-kit.conf", "/etc/mosquitto/conf.d/popkit-uplink.conf",
                     "/etc/mosquitto/popkit/passwd", "/etc/mosquitto/popkit/acl", "/etc/mosquitto/popkit/broker.key",
                     "/etc/mosquitto/popkit/fleet-ca.crt", "/etc/popkit/agent.env", "/etc/popkit/kit.toml",
                     "/etc/systemd/system/popkit-agent.service", "/etc/chrony/chrony.conf",
                     "/etc/NetworkManager/system-connections/popkit-kit.nmconnection"}
    overlay = {"/" + str(p.relative_to(out / "pi" / "root")) for p in (out / "pi" / "root").rglob("*") if p.is_file()}
    assert overlay == on_pi  # the overlay holds exactly what the plan installs
    for path in [*on_pi, "/files.json"]:
        text = (out / "pi" / "root" / path.lstrip("/")).read_text() if path != "/files.json" else \
            (out / "pi" / "files.json").read_text()
        for machine in (str(tmp_path), str(REPO), str(Path.home())):
            assert machine not in text, f"{path} names {machine}, a path of the provisioning machine"
        for key, value in _PATH_KEYS.findall(text) if path.startswith("/etc/mosquitto/") else ():
            assert value in on_pi, f"{path}: {key} {value} is not a file the Pi gets"
    env = _pi_text(out, "/etc/popkit/agent.env")
    url = re.search(r"^POPKIT_MQTT_URL=(\S+)$", env, re.M).group(1)
    assert url == "mqtts://127.0.0.1:8883?account=/etc/popkit/mqtt-account.json"  # no password in the URL
    account = json.loads(_pi_text(out, "/etc/popkit/mqtt-account.json"))["broker"]
    assert account["user"] == f"{KIT}.demo-agent" and account["password"] not in env
    assert _pi_text(out, "/etc/popkit/kit.toml") == DEMO_KIT.read_text()
    assert "bridge_cafile /etc/mosquitto/popkit/fleet-ca.crt" in _pi_text(out, "/etc/mosquitto/conf.d/popkit-uplink.conf")
    modes = {e["path"]: (e["owner"], e["group"], e["mode"]) for e in plan["files"]}
    assert modes["/etc/mosquitto/popkit/broker.key"] == ("mosquitto", "mosquitto", "0600")
    assert modes["/etc/popkit/agent.env"] == ("root", "popkit", "0640")
    assert modes["/etc/NetworkManager/system-connections/popkit-kit.nmconnection"] == ("root", "root", "0600")


def test_the_esp32s_join_the_kits_own_wifi_and_reach_the_pi_at_its_fixed_address(tmp_path):
    from cryptography import x509

    out = _provision(tmp_path)
    door = json.loads((out / "devices" / f"{SCANNER}.json").read_text())
    hotspot = _keyfile(out)
    assert hotspot["wifi"]["mode"] == "ap" and hotspot["connection"]["interface-name"] == "wlan0"
    assert hotspot["ipv4"]["method"] == "shared" and hotspot["ipv4"]["address1"] == "10.42.0.1/24"
    assert hotspot["wifi-security"]["key-mgmt"] == "wpa-psk" and hotspot["wifi"]["band"] == "bg"
    assert door["wifi"] == {"ssid": hotspot["wifi"]["ssid"], "password": hotspot["wifi-security"]["psk"]}
    assert door["wifi"]["ssid"] == f"popkit-{KIT}" and len(door["wifi"]["password"]) >= 16
    assert (door["broker"]["host"], door["broker"]["port"], door["broker"]["tls"]) == ("10.42.0.1", 8883, True)
    cert = x509.load_pem_x509_certificate((out / "pi" / "root" / "etc/mosquitto/popkit/broker.crt").read_bytes())
    names = {str(n) for n in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
             .get_values_for_type(x509.IPAddress)}
    assert {"10.42.0.1", "127.0.0.1"} <= names
    # a new venue is only the Pi's uplink: provisioning again keeps the kit's Wi-Fi and address
    assert main(["kit", "provision", str(DEMO_KIT), "--out", str(out), "--rotate", SCANNER]) == 0
    again = json.loads((out / "devices" / f"{SCANNER}.json").read_text())
    assert again["wifi"] == door["wifi"] and again["broker"]["host"] == "10.42.0.1"
    assert _keyfile(out)["connection"]["uuid"] == hotspot["connection"]["uuid"]


def test_travel_router_topology_puts_the_pi_at_its_reserved_address(tmp_path, capsys):
    wifi = tmp_path / "wifi.json"
    wifi.write_text(json.dumps({"ssid": "kit-router", "password": "router-pass-phrase"}))
    assert main(["kit", "provision", str(DEMO_KIT), "--out", str(tmp_path / "r"), "--network", "router"]) == 3
    assert "--network router needs --kit-address" in capsys.readouterr().err
    out = _provision(tmp_path, "--network", "router", "--kit-address", "192.168.8.2/24", "--wifi", str(wifi))
    lan = _keyfile(out)
    assert lan["connection"]["type"] == "ethernet" and lan["connection"]["interface-name"] == "eth0"
    assert lan["ipv4"]["method"] == "manual" and lan["ipv4"]["address1"] == "192.168.8.2/24,192.168.8.1"
    door = json.loads((out / "devices" / f"{SCANNER}.json").read_text())
    assert door["broker"]["host"] == "192.168.8.2" and door["wifi"]["ssid"] == "kit-router"
    assert _plan(out)["network"] == {"topology": "router", "address": "192.168.8.2/24", "interface": "eth0",
                                     "broker": "192.168.8.2:8883"}
    assert main(["kit", "provision", str(DEMO_KIT), "--out", str(tmp_path / "x"), "--kit-address", "10.42.0.0/24"]) == 3
    assert "--kit-address 10.42.0.0/24: a host address" in capsys.readouterr().err


def test_chrony_takes_internet_time_whenever_the_uplink_has_it(tmp_path):
    conf = _pi_text(_provision(tmp_path), "/etc/chrony/chrony.conf")
    lines = [line for line in conf.splitlines() if line and not line.startswith("#")]
    assert "makestep 1 -1" in lines and "rtcsync" in lines and "pool 2.debian.pool.ntp.org iburst" in lines
    assert [line for line in lines if line.startswith("makestep")] == ["makestep 1 -1"]  # no later one overrides


@needs_root
def test_install_twice_changes_nothing_the_second_time(tmp_path, capsys):
    out = _provision(tmp_path)
    root = seed_root(tmp_path / "pi-root")
    capsys.readouterr()
    assert main(["kit", "install", str(out / "pi"), "--root", str(root)]) == 0
    first = capsys.readouterr().out
    assert "user popkit created" in first and "changed: /etc/popkit/agent.env written" in first
    assert "popkit-agent.service enabled" in first
    before = snapshot(root)
    assert main(["kit", "install", str(out), "--root", str(root)]) == 0  # the provisioning folder works too
    second = capsys.readouterr().out
    assert "\n0 change(s)" in "\n" + second.splitlines()[-1] and "changed:" not in second
    assert snapshot(root) == before  # every byte, mode and owner as it was

    import pwd

    st = (root / "etc/popkit/agent.env").stat()
    assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_uid == 0
    popkit_line = next(line for line in (root / "etc/passwd").read_text().splitlines() if line.startswith("popkit:"))
    assert popkit_line.split(":")[5:] == ["/var/lib/popkit", "/usr/sbin/nologin"]
    key = (root / "etc/mosquitto/popkit/broker.key").stat()
    assert stat.S_IMODE(key.st_mode) == 0o600 and key.st_uid == pwd.getpwnam("mosquitto").pw_uid
    assert os.path.islink(root / "etc/systemd/system/multi-user.target.wants/popkit-agent.service")

    (root / "etc/popkit/agent.env").chmod(0o644)  # someone loosened it: the install puts it back
    assert main(["kit", "install", str(out / "pi"), "--root", str(root)]) == 0
    assert "changed: /etc/popkit/agent.env mode 0640" in capsys.readouterr().out
    assert snapshot(root) == before


@needs_root
def test_install_without_mosquitto_refuses_and_writes_nothing(tmp_path, capsys):
    out = _provision(tmp_path)
    root = seed_root(tmp_path / "pi-root")
    passwd = root / "etc" / "passwd"
    passwd.write_text("".join(line + "\n" for line in passwd.read_text().splitlines()
                              if not line.startswith("mosquitto:")))
    before = snapshot(root)
    assert main(["kit", "install", str(out / "pi"), "--root", str(root)]) == 3
    err = capsys.readouterr().err
    assert "owner 'mosquitto' does not exist" in err and "apt install mosquitto" in err
    assert snapshot(root) == before
    assert main(["kit", "install", str(tmp_path), "--root", str(root)]) == 3
    assert "no files.json" in capsys.readouterr().err


@pytest.mark.skipif(probe_refusal() is not None, reason=f"cannot run the broker inside a root: {probe_refusal()}")
def test_the_installed_kit_broker_refuses_anonymous_and_takes_a_devices_login_over_tls(tmp_path):
    fleet = tmp_path / "fleet-side"  # a fleet broker's CA (another kit's stands in); none answers at :9
    assert main(["kit", "provision", str(DEMO_KIT), "--out", str(fleet)]) == 0
    out = _provision(tmp_path, "--bridge-to", "127.0.0.1:9", "--bridge-ca", str(fleet / "tls" / "ca.crt"))
    root = seed_root(tmp_path / "pi-root")
    assert main(["kit", "install", str(out / "pi"), "--root", str(root)]) == 0
    env = (root / "etc/popkit/agent.env").read_text()
    agent_url = re.search(r"^POPKIT_MQTT_URL=(\S+)$", env, re.M).group(1)
    result = probe_broker(root, {
        "anonymous": "mqtts://10.42.0.1:8883?ca=/etc/mosquitto/popkit/ca.crt",
        "scanner": f"mqtts://10.42.0.1:8883?account={out / 'devices' / f'{SCANNER}.json'}",  # as the ESP32 reaches it
        "agent": agent_url,  # exactly the service's settings, read from the installed root
        "plain": "mqtt://10.42.0.1:1883",
    })
    log = result.pop("log")
    assert result == {"anonymous": "refused: Not authorized", "scanner": "accepted", "agent": "accepted",
                      "plain": "no connection: [Errno 111] Connection refused"}, log
    assert "Loading config file /etc/mosquitto/conf.d/popkit-kit.conf" in log
    assert "Loading config file /etc/mosquitto/conf.d/popkit-uplink.conf" in log
    assert "Connecting bridge (step 1) popkit-demo (127.0.0.1:9)" in log  # the installed bridge, from its Pi path
    assert f"u'{KIT}.{SCANNER}'" in log and f"u'{KIT}.demo-agent'" in log


def test_pi_install_doc_matches_what_provisioning_writes_and_links_only_inside_the_repo(tmp_path):
    doc = (REPO / "docs" / "pi-install.md").read_text()
    fleet_ca = tmp_path / "fleet-ca.crt"
    fleet_ca.write_text("-----BEGIN CERTIFICATE-----\n")
    out = _provision(tmp_path, "--bridge-to", "fleet.example.org:8883", "--bridge-ca", str(fleet_ca))
    plan = _plan(out)
    # the doc's table of what goes where on the Pi: exactly the plan's files (and the agent's data
    # folder), each with the plan's mode; a row may name several files of one folder
    on_pi: dict[str, str] = {}
    for names, mode in re.findall(r"^\| (`/[^|]+) \| [^|]*?(0\d{3}) \|", doc, re.M):
        names = re.findall(r"`([^`]+)`", names)
        folder = names[0].rsplit("/", 1)[0]
        on_pi.update({p: mode for p in [names[0], *(f"{folder}/{n}" for n in names[1:])]})
    plan_modes = {e["path"]: e["mode"] for e in plan["files"]} | {"/var/lib/popkit/": "0750"}
    assert on_pi == plan_modes
    assert {"path": "/var/lib/popkit", "owner": "popkit", "group": "popkit", "mode": "0750"} in plan["dirs"]
    # what it tells the crew to run is what exists
    assert "sudo deploy/install-kit.sh ~/kit-files" in doc and (REPO / "deploy" / "install-kit.sh").exists()
    assert os.access(REPO / "deploy" / "install-kit.sh", os.X_OK)
    for flag in ("--network router", "--kit-address", "--wifi", "--bridge-to", "--bridge-ca", "--source",
                 "--find-links"):
        assert flag in doc
    # no link or mention of anything outside the repository
    assert "DESIGN" not in doc and "http://" not in doc and "https://" not in doc
    for target in re.findall(r"\]\(([^)]+)\)", doc):
        assert (REPO / "docs" / target).exists(), target


@needs_root
@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="no system python3 at /usr/bin/python3")
def test_install_script_runs_with_the_systems_python_alone(tmp_path):
    """deploy/install-kit.sh is for a Pi where PopKit is not installed yet: the standard library only."""
    import subprocess

    out = _provision(tmp_path)
    root = seed_root(tmp_path / "pi-root")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}  # no virtualenv on the PATH
    run = [str(REPO / "deploy" / "install-kit.sh"), str(out / "pi"), "--root", str(root)]
    first = subprocess.run(run, capture_output=True, text=True, env=env, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "changed: /etc/popkit/agent.env written" in first.stdout
    second = subprocess.run(run, capture_output=True, text=True, env=env, timeout=120)
    assert second.returncode == 0 and second.stdout.splitlines()[-1] == f"0 change(s) under {root}", second.stdout


@needs_root
def test_provisioning_again_then_installing_changes_only_what_changed(tmp_path, capsys):
    out = _provision(tmp_path)
    root = seed_root(tmp_path / "pi-root")
    assert main(["kit", "install", str(out / "pi"), "--root", str(root)]) == 0
    assert main(["kit", "provision", str(DEMO_KIT), "--out", str(out)]) == 0  # nothing asked: nothing changes
    capsys.readouterr()
    assert main(["kit", "install", str(out / "pi"), "--root", str(root)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"0 change(s) under {root}"
    passwd = (root / "etc/mosquitto/popkit/passwd").read_text().splitlines()
    assert main(["kit", "provision", str(DEMO_KIT), "--out", str(out), "--rotate", SCANNER]) == 0
    capsys.readouterr()
    assert main(["kit", "install", str(out / "pi"), "--root", str(root)]) == 0
    changed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("changed:")]
    assert changed == ["changed: /etc/mosquitto/popkit/passwd updated"]  # the Pi's side of a rotated door
    now = (root / "etc/mosquitto/popkit/passwd").read_text().splitlines()
    assert [line for line in now if line not in passwd] == [
        line for line in now if line.startswith(f"{KIT}.{SCANNER}:")]  # only the door's line is new
