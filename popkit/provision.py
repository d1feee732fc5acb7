"""Provisioning a kit for its broker: every device its own credentials, and the broker's password
file and ACL that pin each one to its own topic tree (docs/security.md).

What ``provision`` writes, into a folder outside the repository (mode 0700, files 0600):

    credentials.json          every account's password and every ESP32's update key, kept so that
                              provisioning again changes only what it is asked to (a new device, a
                              rotation, a revocation)
    mosquitto/passwd          Mosquitto's password file: PBKDF2-SHA512 hashes ($7$), no password
    mosquitto/acl             Mosquitto's ACL file: each account's topics, read or write
    devices/<device>.json     what a device needs to reach the broker as itself (for flashing)
    fleet.json                the same for the fleet service (its `?account=` file)
    tls/ca.crt, ca.key        the kit's own CA (popkit/tls.py); the key never leaves this folder
    tls/broker.crt, .key      the broker's certificate for the hosts devices reach it at
    mosquitto/mosquitto.conf  the kit broker run from this folder (a bench: its paths are this folder's)

The kit's Pi gets its own copy of what it needs, at its Pi paths: ``popkit kit provision`` writes
``pi/`` after this (popkit/kitfiles.py) and ``popkit kit install`` puts it in place.

Accounts: ``<kit>.<device>`` for the kit's agent and each device that speaks MQTT itself (ids
cannot hold '.', so no device name can pose as another account), and ``popkit-fleet`` for the
fleet service. There are no patterns (%u/%c) in the ACL: every topic is spelled out, so a username
or client id of '+' or '#' names nothing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from kits.contract import DEVICE_CHANNELS, ROOT
from kits.manifest import KitManifest
from plumbing.files import write_atomic
from popkit.tls import TlsFiles, ensure_broker_tls

FLEET_USER = "popkit-fleet"
# Mosquitto 2's default for mosquitto_passwd: PBKDF2-HMAC-SHA512, 101 rounds, 12-byte salt. The
# rounds are few because the broker checks a password at every connect; the passwords are random
# 32-byte tokens, so the hash protects nothing a dictionary could find.
_ROUNDS = 101
_SALT_BYTES = 12
# What a device reads: commands, its desired config, the fleet's receipts for its outbox.
_TO_DEVICE = ("cmd", "config", "receipt")
_FIRMWARE_ROLES = ("scanner", "lighting")  # devices with their own MQTT link (the rest go through the agent)


class ProvisionError(ValueError):
    """Provisioning refused: the message says what and why."""


def mosquitto_hash(password: str, salt: bytes | None = None, rounds: int = _ROUNDS) -> str:
    """``password`` as a Mosquitto 2 password-file hash (``$7$rounds$salt$hash``, base64)."""
    salt = salt if salt is not None else os.urandom(_SALT_BYTES)
    key = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, rounds, dklen=64)
    return f"$7${rounds}${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"


def _hash_matches(line_hash: str, password: str) -> bool:
    try:
        _, scheme, rounds, salt, _key = line_hash.split("$")
        return scheme == "7" and mosquitto_hash(password, base64.b64decode(salt), int(rounds)) == line_hash
    except (ValueError, TypeError):
        return False


def _passwd(path: Path, accounts: dict[str, dict]) -> str:
    """The password file: an account whose password is unchanged keeps its line (salt and all), so
    provisioning again writes the same bytes and the Pi's install changes, and restarts, nothing."""
    kept: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            name, _, line_hash = line.partition(":")
            kept[name] = line_hash
    lines = []
    for name, acct in sorted(accounts.items()):
        old = kept.get(name)
        lines.append(f"{name}:{old if old and _hash_matches(old, acct['password']) else mosquitto_hash(acct['password'])}\n")
    return "".join(lines)


def account(kit: str, device: str) -> str:
    return f"{kit}.{device}"


def _tree(kit: str, device: str) -> list[str]:
    """A device's own channels: it writes what it reports, reads what it is sent."""
    base = f"{ROOT}/{kit}/{device}"
    return ([f"topic write {base}/{ch}" for ch in DEVICE_CHANNELS]
            + [f"topic read {base}/{ch}" for ch in _TO_DEVICE])


def acl_rules(manifest: KitManifest) -> dict[str, list[str]]:
    """Per account of the kit, its ACL lines (Mosquitto's acl_file syntax)."""
    kit = manifest.id
    rules: dict[str, list[str]] = {}
    agent = _tree(kit, manifest.agent)
    for spec in manifest.devices:
        if spec.hosted:  # the agent reports for what it drives, and takes its commands and config
            agent += _tree(kit, spec.id)
        elif spec.role in _FIRMWARE_ROLES:
            lines = _tree(kit, spec.id)
            if spec.role == "scanner":  # it asks the kit's hub before it admits
                lines += [f"topic write {ROOT}/{kit}/{spec.id}/claim", f"topic read {ROOT}/{kit}/{spec.id}/claimed"]
                # in till mode (its config may switch it any time) it asks the kit's till about a product code
                lines += [f"topic write {ROOT}/{kit}/{spec.id}/till", f"topic read {ROOT}/{kit}/{spec.id}/tilled"]
            lines.append(f"topic read {ROOT}/{kit}/time")  # the kit's clock (the Pi's agent publishes it)
            lines.append(f"topic read {ROOT}/{kit}/{spec.id}/update")  # its update offer, from the kit's agent
            if spec.role == "scanner":  # the kit's own ticket list (agent/tickets.py)
                lines.append(f"topic read {ROOT}/{kit}/revocations")
            rules[account(kit, spec.id)] = lines
    # the hub: every door's claims in, answers out, and the doors' check-ins to learn lone admissions
    agent += [f"topic read {ROOT}/{kit}/+/claim", f"topic write {ROOT}/{kit}/+/claimed",
              # the till: the scanners' product codes in, the answers out (kept in the kit, like the claims)
              f"topic read {ROOT}/{kit}/+/till", f"topic write {ROOT}/{kit}/+/tilled",
              f"topic read {ROOT}/{kit}/+/event",
              f"topic read {ROOT}/{kit}/+/state",  # the panel's ready/not ready (agent/statewatch.py)
              f"topic write {ROOT}/{kit}/time",  # the kit's clock, for its ESP32s
              # update offers to its ESP32s (agent/updates/offers.py); never bridged: the fleet tells the
              # agent, the agent its devices
              f"topic write {ROOT}/{kit}/+/update",
              # the kit's ticket list: the scanners' configs in (their keys), the list out, requests in
              f"topic read {ROOT}/{kit}/+/config",
              f"topic readwrite {ROOT}/{kit}/revocations", f"topic readwrite {ROOT}/{kit}/revoke"]
    rules[account(kit, manifest.agent)] = agent
    return rules


def bridge_account(kit: str) -> str:
    # no '.': it can never be a `<kit>.<device>` account, whatever the kit and device are called
    return f"popkit-bridge-{kit}"


def bridge_rules(kit: str) -> list[str]:
    """The kit broker's bridge, at the fleet broker: everything the kit's devices report goes up,
    what the fleet sends them comes down; the hub's claims stay in the kit."""
    return ([f"topic write {ROOT}/{kit}/+/{ch}" for ch in DEVICE_CHANNELS]
            + [f"topic read {ROOT}/{kit}/+/{ch}" for ch in _TO_DEVICE])


def bridge_conf(kit: str, password: str, host: str, port: int, ca: Path) -> str:
    """Mosquitto's bridge section for the kit broker: TLS to the fleet broker, verified against its
    CA, logged in as the kit's bridge account; a persistent session at QoS 1 both ways, so what
    the kit owes while the uplink is down is delivered when it returns."""
    up = "".join(f"topic {ROOT}/{kit}/+/{ch} out 1\n" for ch in DEVICE_CHANNELS)
    down = "".join(f"topic {ROOT}/{kit}/+/{ch} in 1\n" for ch in _TO_DEVICE)
    return (f"# written by popkit kit provision: the bridge to the fleet broker (holds a password: 0600)\n"
            f"connection popkit-{kit}\naddress {host}:{port}\n"
            f"remote_clientid {bridge_account(kit)}\nremote_username {bridge_account(kit)}\n"
            f"remote_password {password}\nbridge_cafile {Path(ca).resolve()}\nbridge_insecure false\n"
            f"bridge_protocol_version mqttv311\ncleansession false\ntry_private true\nnotifications false\n"
            f"restart_timeout 2 30\n{up}{down}")


# The kit broker's bridge queue holds what the kit owes while the uplink is down: ~10 devices at a
# message every 5 s is ~7,000 an hour. Past the bound Mosquitto drops new messages for the bridge;
# nothing is lost by it, only delayed: every producer keeps each message in its outbox until the
# fleet's receipt, and the fleet asks for any gap it sees once the uplink is back (Receipt.missing).
KIT_QUEUE_MESSAGES = 100_000
KIT_QUEUE_BYTES = 64 * 1024 * 1024


def kit_broker_conf(folder: Path, port: int, tls: TlsFiles | None, data_dir: Path) -> str:
    """mosquitto.conf for the kit broker run from the provisioning folder (``mosquitto -c
    <folder>/mosquitto/mosquitto.conf``: a bench, the tests): the kit's devices, each logged in as
    itself, the queue for an outage, and the bridge (conf.d) when the kit was provisioned with one.
    Its paths are this machine's; the Pi's own is ``popkit.kitfiles.kit_broker_conf``."""
    import pwd

    folder = Path(folder).resolve()
    # Mosquitto drops from root to its own user before it reads the password file, and every file
    # here is 0600 to whoever provisioned: it runs as that user (the kit's service account on a Pi).
    owner = pwd.getpwuid(os.geteuid()).pw_name
    tls_lines = (f"certfile {tls.cert.resolve()}\nkeyfile {tls.key.resolve()}\ntls_version tlsv1.2\n"
                 if tls is not None else "")
    return (f"# written by popkit kit provision: the kit broker (Mosquitto 2) on the kit's Pi\n"
            f"user {owner}\nper_listener_settings false\nlistener {port} 0.0.0.0\n{tls_lines}"
            f"allow_anonymous false\npassword_file {folder / 'mosquitto' / 'passwd'}\n"
            f"acl_file {folder / 'mosquitto' / 'acl'}\n"
            f"persistence true\npersistence_location {Path(data_dir).resolve()}/\nautosave_interval 30\n"
            f"max_inflight_messages 100\nmax_queued_messages {KIT_QUEUE_MESSAGES}\n"
            f"max_queued_bytes {KIT_QUEUE_BYTES}\npersistent_client_expiration 7d\nset_tcp_nodelay true\n"
            f"connection_messages true\ninclude_dir {folder / 'mosquitto' / 'conf.d'}\n")


def fleet_rules() -> list[str]:
    """The fleet ingests what devices report and sends commands, configs and receipts: to every kit."""
    return ([f"topic read {ROOT}/+/+/{ch}" for ch in DEVICE_CHANNELS]
            + [f"topic write {ROOT}/+/+/{ch}" for ch in _TO_DEVICE])


@dataclass
class Provisioned:
    folder: Path
    accounts: dict[str, str]  # account -> password (for the caller to hand out; never logged)
    created: list[str]
    rotated: list[str]
    revoked: list[str]
    tls: TlsFiles | None = None

    @property
    def passwd(self) -> Path:
        return self.folder / "mosquitto" / "passwd"

    @property
    def acl(self) -> Path:
        return self.folder / "mosquitto" / "acl"

    def device_file(self, device: str) -> Path:
        return self.folder / "devices" / f"{device}.json"

    @property
    def conf_dir(self) -> Path:
        """The kit broker's include_dir: the bridge's section when there is one."""
        return self.folder / "mosquitto" / "conf.d"

    @property
    def broker_conf(self) -> Path:
        """The kit broker's mosquitto.conf (``mosquitto -c`` it on the Pi)."""
        return self.folder / "mosquitto" / "mosquitto.conf"

    @property
    def fleet_file(self) -> Path:
        return self.folder / "fleet.json"


def provision(manifest: KitManifest, folder: Path, *, broker_host: str = "127.0.0.1", broker_port: int | None = None,
              rotate: tuple[str, ...] = (), revoke: tuple[str, ...] = (), tls: bool = True,
              bridge_to: tuple[str, int, Path] | None = None, wifi: dict | None = None,
              event_keys: tuple = (), broker_data: Path | None = None) -> Provisioned:
    """Credentials for ``manifest``'s kit in ``folder``: new accounts get a random password, ``rotate``
    (device ids) get a new one, ``revoke`` lose theirs (the broker disconnects and refuses them once
    it reloads its files); everyone else keeps theirs. The fleet's account is made once per folder.
    With ``tls`` (the default) the kit's CA and a broker certificate for ``broker_host`` are made too,
    and every account file tells its client to verify the broker with that CA.
    ``bridge_to`` (host, port, the fleet broker's CA file): the kit broker's bridge to the fleet
    broker gets its own account here and its config in ``mosquitto/conf.d/bridge.conf``.
    ``wifi`` ({ssid, password}) goes into every ESP32's file, ``event_keys`` (kits.tickets.EventKey)
    into every scanner's (its `gate`); both are kept, so provisioning again without them keeps them.
    ``mosquitto/mosquitto.conf`` is the kit broker's whole config for the Pi, persisting to
    ``broker_data`` (default /var/lib/mosquitto)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)
    kit = manifest.id
    known = {s.id for s in manifest.devices} | {manifest.agent}
    hosted = {s.id for s in manifest.devices if s.hosted or s.role not in _FIRMWARE_ROLES} - {manifest.agent}
    for d in (*rotate, *revoke):
        if d not in known:
            raise ProvisionError(f"{d!r} is not a device of kit {kit!r} (its devices: {', '.join(sorted(known))})")
        if d in hosted:  # a printer, a power bank...: the agent speaks for it, with the agent's account
            raise ProvisionError(f"{d!r} has no broker account of its own: the agent {manifest.agent!r} speaks for "
                                 f"it (rotate or revoke {manifest.agent!r})")
    store = folder / "credentials.json"
    try:
        kept: dict = json.loads(store.read_text()) if store.exists() else {}
    except (OSError, ValueError) as exc:
        raise ProvisionError(f"{store}: cannot read the kept credentials ({exc}); "
                             "restore it or move the folder away to start afresh") from None
    accounts: dict[str, dict] = kept.get("accounts", {})
    rules = acl_rules(manifest)
    if bridge_to is not None:
        rules[bridge_account(kit)] = bridge_rules(kit)
    created, rotated, revoked = [], [], []
    for name in [FLEET_USER, *rules]:
        device = name.split(".", 1)[1] if "." in name else None
        if device is not None and device in revoke:
            if accounts.pop(name, None) is not None:
                revoked.append(name)
            continue
        if name not in accounts:
            accounts[name] = {"password": secrets.token_urlsafe(32)}
            created.append(name)
        elif device is not None and device in rotate:
            accounts[name] = {"password": secrets.token_urlsafe(32)}
            rotated.append(name)
    # accounts of this kit no longer in its manifest go too (a device taken out of the case)
    for name in [n for n in accounts if n.startswith(kit + ".") and n not in rules]:  # (the bridge stays)
        del accounts[name]
        revoked.append(name)

    # the broker's files: every account in the folder (several kits may share one broker)
    acls = {n: ls for n, ls in {**kept.get("acl", {}), **rules}.items() if n in accounts}
    acl = [f"user {FLEET_USER}", *fleet_rules(), ""]
    for name in sorted(acls):
        acl += [f"user {name}", *acls[name], ""]
    flash = kept.get("flash", {})
    if wifi is not None:
        if not (isinstance(wifi.get("ssid"), str) and wifi["ssid"] and isinstance(wifi.get("password"), str)):
            raise ProvisionError("wifi: needs {\"ssid\": ..., \"password\": ...}")
        flash["wifi"] = {"ssid": wifi["ssid"], "password": wifi["password"]}
    if event_keys:
        events = {e["event"]: e for e in flash.get("events", [])}
        events.update({k.event: {"event": k.event, "key": k.secret.hex()} for k in event_keys})
        flash["events"] = sorted(events.values(), key=lambda e: e["event"])
    update_keys = _update_keys(kept.get("update_keys", {}), manifest, accounts)
    write_atomic(store, json.dumps({"accounts": accounts, "acl": acls, "flash": flash, "update_keys": update_keys},
                                   indent=2, sort_keys=True) + "\n")
    write_atomic(folder / "mosquitto" / "passwd", _passwd(folder / "mosquitto" / "passwd", accounts))
    write_atomic(folder / "mosquitto" / "acl", "# written by popkit kit provision: every topic spelled out\n"
                   + "\n".join(acl))

    files = ensure_broker_tls(folder / "tls", kit, [broker_host]) if tls else None
    port = broker_port or (8883 if tls else 1883)

    ca_pem = files.ca.read_text() if files is not None else None

    def login(name: str) -> dict:
        broker = {"host": broker_host, "port": port, "tls": tls, "user": name, "password": accounts[name]["password"]}
        if ca_pem is not None:
            broker["ca"] = ca_pem
        return broker

    if bridge_to is not None:
        host, bport, ca = bridge_to
        write_atomic(folder / "mosquitto" / "conf.d" / "bridge.conf",
                       bridge_conf(kit, accounts[bridge_account(kit)]["password"], host, bport, ca))
    (folder / "mosquitto" / "conf.d").mkdir(parents=True, exist_ok=True)  # include_dir must exist
    write_atomic(folder / "mosquitto" / "mosquitto.conf",
                 kit_broker_conf(folder, port, files, broker_data or Path("/var/lib/mosquitto")))

    # what each device of this kit flashes (or the agent reads): the broker, and itself
    # (`popkit device flash` writes it whole as the board's /<role>.json: popkit/flashtree.py)
    specs = {spec.id: spec for spec in manifest.devices}
    scanners = {spec.id for spec in manifest.devices if spec.role == "scanner" and not spec.hosted}
    for name in rules:
        if name not in accounts or "." not in name:  # revoked, or the bridge (its conf is above)
            continue
        device = name.split(".", 1)[1]
        config = {"kit": kit, "device": device, "broker": login(name)}
        if device != manifest.agent and "wifi" in flash:  # ESP32s: the board joins it (board.configure)
            config["wifi"] = flash["wifi"]
        if device in update_keys:  # what it checks an update's tag with (docs/updates.md)
            config["update_key"] = update_keys[device]
        if device in scanners and flash.get("events"):  # what the door checks tickets with
            config["gate"] = {"leeway": 60, "events": flash["events"]}
        spec = specs.get(device)
        if spec is not None and spec.outputs is not None:  # a lighting controller's PWM pins and DMX line
            config.update(spec.outputs.device_fields())
        if spec is not None and spec.fallback is not None:  # what it shows before it has a timeline
            config.update(spec.fallback.device_fields())
        write_atomic(folder / "devices" / f"{device}.json", json.dumps(config, indent=2) + "\n")
    write_atomic(folder / "fleet.json", json.dumps({"broker": login(FLEET_USER)}, indent=2) + "\n")
    for name in revoked:  # a revoked device's secret does not stay on disk
        (folder / "devices" / f"{name.split('.', 1)[1]}.json").unlink(missing_ok=True)
    return Provisioned(folder, {n: a["password"] for n, a in accounts.items()}, created, rotated, revoked, files)


def _update_keys(kept: dict, manifest: KitManifest, accounts: dict) -> dict[str, str]:
    """Each ESP32's update key (32 random bytes, hex): the agent tags an update's manifest with it and
    the device checks the tag (docs/updates.md). Kept across provisioning, rotation included (a
    rotation is of the broker password: the Pi's side of it is the password file alone), since the
    board holds it until it is flashed again; gone with the device's account when it is revoked, so
    a device added back gets a new one."""
    keys = {}
    for spec in manifest.devices:
        if spec.hosted or spec.role not in _FIRMWARE_ROLES or account(manifest.id, spec.id) not in accounts:
            continue
        old = kept.get(spec.id)
        keys[spec.id] = old if isinstance(old, str) else secrets.token_hex(32)
    return keys


def register_kit(manifest_text: str, kit_id: str, fleet_url: str, token: str, timeout: float = 10.0) -> dict:
    """Register (or update) the kit at the fleet: its manifest to PUT /api/v1/kits/{id}, as ops.
    Returns the fleet's view of the kit; raises ProvisionError with the fleet's own reason."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"{fleet_url.rstrip('/')}/api/v1/kits/{kit_id}", method="PUT",
                                 data=manifest_text.encode(),
                                 headers={"Content-Type": "text/plain; charset=utf-8",
                                          "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.load(r)
    except urllib.error.HTTPError as exc:
        try:
            detail = json.load(exc).get("detail")
        except ValueError:
            detail = None
        raise ProvisionError(f"the fleet at {fleet_url} refused kit {kit_id!r}: HTTP {exc.code}"
                             + (f": {detail}" if detail else "")) from None
    except (urllib.error.URLError, OSError) as exc:
        raise ProvisionError(f"the fleet at {fleet_url} could not be reached: {getattr(exc, 'reason', exc)}") from None
