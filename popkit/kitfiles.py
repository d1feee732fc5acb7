"""The kit's Pi as provisioned: every file it needs, at the path it has on the Pi, in one folder.

``popkit kit provision`` calls :func:`write_pi_files` after the credentials (popkit/provision.py).
It writes ``<folder>/pi/``, the only part of the provisioning folder that goes to the Pi (the kit's
CA key and every other account's password stay behind)::

    pi/files.json         every file and folder below: its path on the Pi, owner, group, mode, and
                          the service that must restart when it changes (popkit/kitinstall.py)
    pi/root/etc/...       the files themselves, as a root overlay: installing is a copy

Rules that shape it:

* **Paths are the Pi's.** Nothing here names the provisioning machine's folders: the broker's TLS
  files, password file and ACL live in ``/etc/mosquitto/popkit/``, the agent's settings and
  manifest in ``/etc/popkit/``, so the folder can be made anywhere and installed as it is.
* **The kit carries its own network.** The ESP32s join the kit's Wi-Fi and reach the broker at the
  Pi's fixed address on it (the broker certificate names it); the venue's uplink is the Pi's
  other interface (or the travel router's WAN). A new venue changes only the uplink, never an ESP32.
  Two topologies: ``ap`` (the Pi is the access point: a NetworkManager hotspot on wlan0, DHCP and
  the fixed address 10.42.0.1) and ``router`` (the kit's travel router makes the Wi-Fi; the Pi sits
  on its LAN at a reserved address).
* **The Pi keeps the kit's time**: chrony takes internet time when the uplink has it and steps the
  clock whenever it is more than a second off (a kit may boot hours before its uplink appears),
  ``rtcsync`` keeps a DS3231 set; the agent serves time to the ESP32s over MQTT (docs/pi-install.md).
* **Mosquitto's own files stay Debian's**: the kit broker is one ``conf.d`` file (and the bridge
  another) under the package's ``/etc/mosquitto/mosquitto.conf``, which already sets persistence,
  the pid file and the log.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from kits.manifest import KitManifest
from plumbing.files import write_atomic
from popkit.provision import KIT_QUEUE_BYTES, KIT_QUEUE_MESSAGES, Provisioned, account

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"  # the unit and polkit rule, from this checkout
PI_DIR = "pi"
FILES = "files.json"

# Where things are on the Pi.
MOSQUITTO_DIR = Path("/etc/mosquitto/popkit")
KIT_CONF = Path("/etc/mosquitto/conf.d/popkit-kit.conf")
UPLINK_CONF = Path("/etc/mosquitto/conf.d/popkit-uplink.conf")  # after popkit-kit.conf: conf.d is read in order
ETC = Path("/etc/popkit")
AGENT_ENV = ETC / "agent.env"
KIT_TOML = ETC / "kit.toml"
AGENT_ACCOUNT = ETC / "mqtt-account.json"
UPDATE_KEYS = ETC / "update-keys.json"  # each ESP32's update key, for the agent's tags (docs/updates.md)
RELEASE_PUB = ETC / "release.pub"  # the release public key the agent checks bundles with (--release-pub)
RELEASE_PUB_KEPT = "release.pub"  # its copy in the provisioning folder: provisioning again keeps it
AGENT_DATA = Path("/var/lib/popkit")
AGENT_UNIT = Path("/etc/systemd/system/popkit-agent.service")
UPDATE_UNIT = Path("/etc/systemd/system/popkit-agent-update@.service")  # the agent's self-update, as root
POLKIT_RULE = Path("/etc/polkit-1/rules.d/50-popkit-poweroff.rules")
NM_DIR = Path("/etc/NetworkManager/system-connections")
CHRONY_CONF = Path("/etc/chrony/chrony.conf")

DEFAULT_AP_ADDRESS = "10.42.0.1/24"  # NetworkManager's own default for a shared connection
AGENT_SERVICE, BROKER_SERVICE, CHRONY_SERVICE, NM_RELOAD = (
    "popkit-agent.service", "mosquitto.service", "chrony.service", "NetworkManager")


class KitFilesError(ValueError):
    """The Pi's files cannot be written: the message names the option or file and why."""


@dataclass(frozen=True)
class KitNetwork:
    """The kit's own network, as the ESP32s see it."""

    topology: str = "ap"  # "ap": the Pi is the access point; "router": a travel router's LAN
    address: str = DEFAULT_AP_ADDRESS  # the Pi's address on it, with the prefix
    interface: str = ""  # default: wlan0 (ap), eth0 (router)
    gateway: str | None = None  # router: the router's address (default: the first of the subnet)
    channel: int = 6  # ap: 2.4 GHz channel (the ESP32 has no 5 GHz radio)

    def __post_init__(self):
        if self.topology not in ("ap", "router"):
            raise KitFilesError(f"--network {self.topology!r}: ap (the Pi is the kit's access point) or router "
                                "(the kit's travel router)")
        try:
            iface = ipaddress.ip_interface(self.address)
        except ValueError:
            raise KitFilesError(f"--kit-address {self.address!r}: an IPv4 address with its prefix, e.g. "
                                f"{DEFAULT_AP_ADDRESS}") from None
        if iface.version != 4 or iface.network.prefixlen >= 31 or iface.ip in (iface.network.network_address,
                                                                               iface.network.broadcast_address):
            raise KitFilesError(f"--kit-address {self.address}: a host address on an IPv4 subnet (e.g. "
                                f"{DEFAULT_AP_ADDRESS})")
        if self.gateway is not None and ipaddress.ip_address(self.gateway) not in iface.network:
            raise KitFilesError(f"--gateway {self.gateway}: not on the kit network {iface.network}")
        if not 1 <= self.channel <= 13:
            raise KitFilesError(f"--channel {self.channel}: a 2.4 GHz channel, 1 to 13")

    @property
    def host(self) -> str:
        """Where the ESP32s reach the broker: the Pi's fixed address."""
        return str(ipaddress.ip_interface(self.address).ip)

    @property
    def ifname(self) -> str:
        return self.interface or ("wlan0" if self.topology == "ap" else "eth0")

    @property
    def router(self) -> str:
        net = ipaddress.ip_interface(self.address).network
        return self.gateway or str(next(net.hosts()))


def kit_wifi(folder: Path, kit: str) -> dict:
    """The kit's Wi-Fi for a kit provisioned without ``--wifi``: the one kept in the folder, else a
    new WPA2 network of its own (SSID ``popkit-<kit>``, a random passphrase)."""
    store = Path(folder) / "credentials.json"
    try:
        kept = json.loads(store.read_text()).get("flash", {}).get("wifi") if store.exists() else None
    except (OSError, ValueError):
        kept = None  # provision() itself names the unreadable file
    if kept:
        return kept
    return {"ssid": f"popkit-{kit}"[:32], "password": secrets.token_urlsafe(18)}


def kit_broker_conf(port: int, tls: bool) -> str:
    """The kit broker: one conf.d file for Debian's mosquitto.conf (which sets persistence in
    /var/lib/mosquitto, the pid file and the log)."""
    tls_lines = (f"certfile {MOSQUITTO_DIR}/broker.crt\nkeyfile {MOSQUITTO_DIR}/broker.key\ntls_version tlsv1.2\n"
                 if tls else "")
    return (f"# written by popkit kit provision: the kit broker. The ESP32s reach it at the Pi's fixed address\n"
            f"# on the kit network, the agent at 127.0.0.1; every client logs in as itself, over TLS.\n"
            f"listener {port}\n{tls_lines}allow_anonymous false\n"
            f"password_file {MOSQUITTO_DIR}/passwd\nacl_file {MOSQUITTO_DIR}/acl\n"
            f"# what the kit owes the fleet while the uplink is down waits here (docs/pi-install.md)\n"
            f"autosave_interval 30\nmax_inflight_messages 100\nmax_queued_messages {KIT_QUEUE_MESSAGES}\n"
            f"max_queued_bytes {KIT_QUEUE_BYTES}\npersistent_client_expiration 7d\nset_tcp_nodelay true\n"
            f"connection_messages true\n")


def uplink_conf(bridge_text: str) -> tuple[str, Path | None]:
    """The bridge section provisioning wrote, with the fleet CA at its Pi path; and the CA file it
    named on this machine (copied into the Pi's files)."""
    lines, ca = [], None
    for line in bridge_text.splitlines():
        if line.startswith("bridge_cafile "):
            ca = Path(line.split(" ", 1)[1].strip())
            line = f"bridge_cafile {MOSQUITTO_DIR}/fleet-ca.crt"
        lines.append(line)
    return "\n".join(lines) + "\n", ca


def agent_env(port: int, tls: bool, events: list[str] = (), update_listen: str = "", release_pub: bool = False) -> str:
    scheme = "mqtts" if tls else "mqtt"
    flashed = ("# The events whose keys the scanners were flashed with (ids only; the keys stay on the doors).\n"
               f"POPKIT_KIT_EVENTS={','.join(events)}\n") if events else ""
    updates = ""
    if update_listen:
        updates = ("# Field updates (docs/updates.md): the ESP32s download releases from the agent at the Pi's\n"
                   f"# address on the kit network (port 8468).\nPOPKIT_UPDATE_LISTEN={update_listen}\n")
    if release_pub:
        updates += ("# The release public key: a bundle from the fleet is kept only if it signed it.\n"
                    f"POPKIT_RELEASE_PUBKEY={RELEASE_PUB}\n")
    return ("# /etc/popkit/agent.env: the agent's settings (written by popkit kit provision; 0640 root:popkit).\n"
            "# The kit broker on this Pi, over TLS; the login (account <kit>.<agent>) and the kit's CA are in\n"
            f"# {AGENT_ACCOUNT}, never in this URL.\n"
            f"POPKIT_MQTT_URL={scheme}://127.0.0.1:{port}?account={AGENT_ACCOUNT}\n"
            f"POPKIT_AGENT_DATA={AGENT_DATA}\n{flashed}{updates}")


def hotspot_keyfile(kit: str, wifi: dict, net: KitNetwork) -> str:
    """NetworkManager keyfile: the Pi as the kit's WPA2 access point, sharing its address by DHCP."""
    conn = uuid.uuid5(uuid.NAMESPACE_URL, f"popkit:{kit}:kit-wifi")  # the same on every provisioning
    return (f"# written by popkit kit provision: the kit's own Wi-Fi (the Pi is its access point)\n"
            f"[connection]\nid=popkit-kit\nuuid={conn}\ntype=wifi\ninterface-name={net.ifname}\n"
            f"autoconnect=true\nautoconnect-priority=100\n\n"
            f"[wifi]\nmode=ap\nband=bg\nchannel={net.channel}\nssid={wifi['ssid']}\n\n"
            # WPA2 (the ESP32 speaks it); pmf off: the Pi's brcmfmac refuses an access point with PMF
            f"[wifi-security]\nkey-mgmt=wpa-psk\nproto=rsn\npairwise=ccmp\ngroup=ccmp\npmf=1\npsk={wifi['password']}\n\n"
            # shared: NetworkManager hands out addresses on the kit network (dnsmasq) from the Pi's
            f"[ipv4]\nmethod=shared\naddress1={net.address}\n\n[ipv6]\nmethod=disabled\n")


def lan_keyfile(kit: str, net: KitNetwork) -> str:
    """NetworkManager keyfile: the Pi on the travel router's LAN at its reserved address."""
    conn = uuid.uuid5(uuid.NAMESPACE_URL, f"popkit:{kit}:kit-lan")
    return (f"# written by popkit kit provision: the Pi on the kit's travel router, at a fixed address\n"
            f"[connection]\nid=popkit-kit\nuuid={conn}\ntype=ethernet\ninterface-name={net.ifname}\n"
            f"autoconnect=true\nautoconnect-priority=100\n\n[ethernet]\n\n"
            f"[ipv4]\nmethod=manual\naddress1={net.address},{net.router}\ndns={net.router};\n\n"
            f"[ipv6]\nmethod=disabled\n")


def chrony_conf() -> str:
    """Debian's chrony.conf with the kit's two changes (its conf.d is read before its own makestep,
    so a drop-in cannot change that)."""
    return ("# /etc/chrony/chrony.conf, written by popkit kit provision: Debian's, with the kit's changes marked.\n"
            "confdir /etc/chrony/conf.d\npool 2.debian.pool.ntp.org iburst\nsourcedir /run/chrony-dhcp\n"
            "sourcedir /etc/chrony/sources.d\nkeyfile /etc/chrony/chrony.keys\n"
            "driftfile /var/lib/chrony/chrony.drift\nntsdumpdir /var/lib/chrony\nlogdir /var/log/chrony\n"
            "maxupdateskew 100.0\n"
            "# kit: the kernel copies the system time to the RTC (a DS3231) every 11 minutes, so a Pi\n"
            "# powered off keeps the time it last had from the internet\n"
            "rtcsync\n"
            "# kit: step the clock whenever it is more than 1 s off, not only in the first updates: the uplink\n"
            "# may come hours after boot, with the clock on a stale last-known time (Debian: makestep 1 3)\n"
            "makestep 1 -1\n"
            "leapsectz right/UTC\n")


@dataclass(frozen=True)
class PiFile:
    path: Path  # on the Pi
    owner: str
    group: str
    mode: int
    restart: str | None = None  # the service to restart when it changes

    def entry(self) -> dict:
        return {"path": str(self.path), "owner": self.owner, "group": self.group, "mode": f"{self.mode:04o}",
                **({"restart": self.restart} if self.restart else {})}


def _deploy_file(name: str) -> str:
    path = DEPLOY / name
    try:
        return path.read_text()
    except OSError as exc:
        raise KitFilesError(f"{path}: cannot read it ({exc.strerror}): provision from a clone of PopKit") from None


def keep_release_pub(folder: Path, path: Path) -> None:
    """``--release-pub FILE``: checked, and kept in the provisioning folder, so that provisioning
    again without it keeps it on the Pi."""
    from kits.release import parse_public_key

    try:
        key = parse_public_key(Path(path).read_bytes())
    except OSError as exc:
        raise KitFilesError(f"--release-pub {path}: cannot read it ({exc.strerror})") from None
    except ValueError as exc:
        raise KitFilesError(f"--release-pub {path}: {exc}") from None
    write_atomic(Path(folder) / RELEASE_PUB_KEPT, key.hex() + "\n", private=False)


def write_pi_files(done: Provisioned, manifest: KitManifest, manifest_text: str, net: KitNetwork) -> Path:
    """``<folder>/pi``: the Pi's files for ``manifest``'s kit, as provisioned in ``done`` (written
    whole each time: a file no longer wanted, e.g. a bridge taken away, is gone from it)."""
    creds = json.loads((done.folder / "credentials.json").read_text())
    wifi = creds.get("flash", {}).get("wifi")
    if net.topology == "ap" and not wifi:
        raise KitFilesError("the kit's access point needs its Wi-Fi: provision with --wifi FILE, or without it "
                            "for a generated one")
    tls = done.tls is not None
    port = json.loads(done.fleet_file.read_text())["broker"]["port"]
    agent = account(manifest.id, manifest.agent)
    agent_file = done.device_file(manifest.agent)
    if agent not in done.accounts or not agent_file.exists():
        raise KitFilesError(f"{agent_file}: the agent's account {agent!r} is missing (was it revoked?)")

    out = done.folder / PI_DIR
    staging = done.folder / f".{PI_DIR}.new"
    shutil.rmtree(staging, ignore_errors=True)
    files: list[PiFile] = []

    def put(pi: PiFile, data: str | bytes) -> None:
        write_atomic(staging / "root" / pi.path.relative_to("/"), data)
        files.append(pi)

    mosq = "mosquitto"
    put(PiFile(KIT_CONF, "root", "root", 0o644, BROKER_SERVICE), kit_broker_conf(port, tls))
    put(PiFile(MOSQUITTO_DIR / "passwd", mosq, mosq, 0o600, BROKER_SERVICE), done.passwd.read_bytes())
    put(PiFile(MOSQUITTO_DIR / "acl", mosq, mosq, 0o600, BROKER_SERVICE), done.acl.read_bytes())
    if tls:
        put(PiFile(MOSQUITTO_DIR / "ca.crt", "root", "root", 0o644, BROKER_SERVICE), done.tls.ca.read_bytes())
        put(PiFile(MOSQUITTO_DIR / "broker.crt", "root", "root", 0o644, BROKER_SERVICE), done.tls.cert.read_bytes())
        put(PiFile(MOSQUITTO_DIR / "broker.key", mosq, mosq, 0o600, BROKER_SERVICE), done.tls.key.read_bytes())
    bridge = done.conf_dir / "bridge.conf"
    if bridge.exists():
        text, fleet_ca = uplink_conf(bridge.read_text())
        if fleet_ca is None or not fleet_ca.is_file():
            raise KitFilesError(f"{bridge}: its bridge_cafile {fleet_ca} is gone: provision again with --bridge-ca")
        put(PiFile(UPLINK_CONF, mosq, mosq, 0o600, BROKER_SERVICE), text)
        put(PiFile(MOSQUITTO_DIR / "fleet-ca.crt", "root", "root", 0o644, BROKER_SERVICE), fleet_ca.read_bytes())

    release_pub = done.folder / RELEASE_PUB_KEPT
    events = [e["event"] for e in creds.get("flash", {}).get("events", ())]
    put(PiFile(AGENT_ENV, "root", "popkit", 0o640, AGENT_SERVICE),
        agent_env(port, tls, events, update_listen=net.host, release_pub=release_pub.is_file()))
    if release_pub.is_file():  # public: the self-update unit (root) and the agent read it
        put(PiFile(RELEASE_PUB, "root", "popkit", 0o644, AGENT_SERVICE), release_pub.read_bytes())
    put(PiFile(KIT_TOML, "root", "popkit", 0o640, AGENT_SERVICE), manifest_text)
    put(PiFile(AGENT_ACCOUNT, "root", "popkit", 0o640, AGENT_SERVICE), agent_file.read_bytes())
    # 0600 and the agent's own: anyone who reads a device's key can make that device take a manifest
    put(PiFile(UPDATE_KEYS, "popkit", "popkit", 0o600),  # no restart: the agent re-reads it when it changes
        json.dumps(creds.get("update_keys", {}), indent=2, sort_keys=True) + "\n")
    put(PiFile(AGENT_UNIT, "root", "root", 0o644, AGENT_SERVICE), _deploy_file("popkit-agent.service"))
    put(PiFile(UPDATE_UNIT, "root", "root", 0o644), _deploy_file("popkit-agent-update@.service"))  # started on demand
    put(PiFile(POLKIT_RULE, "root", "root", 0o644), _deploy_file("50-popkit-poweroff.rules"))

    keyfile = hotspot_keyfile(manifest.id, wifi, net) if net.topology == "ap" else lan_keyfile(manifest.id, net)
    put(PiFile(NM_DIR / "popkit-kit.nmconnection", "root", "root", 0o600, NM_RELOAD), keyfile)  # NM wants 0600
    put(PiFile(CHRONY_CONF, "root", "root", 0o644, CHRONY_SERVICE), chrony_conf())

    dirs = [PiFile(MOSQUITTO_DIR, "root", "root", 0o755), PiFile(ETC, "root", "popkit", 0o750),
            PiFile(AGENT_DATA, "popkit", "popkit", 0o750)]
    plan = {"format": 1, "kit": manifest.id, "network": {"topology": net.topology, "address": net.address,
                                                         "interface": net.ifname, "broker": f"{net.host}:{port}"},
            "dirs": [d.entry() for d in dirs], "files": [f.entry() for f in files],
            "enable": [BROKER_SERVICE, CHRONY_SERVICE, AGENT_SERVICE]}
    write_atomic(staging / FILES, json.dumps(plan, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out
