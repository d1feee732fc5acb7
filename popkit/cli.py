"""``popkit``: one command, a subcommand per job. Flags override POPKIT_* environment variables."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _fleet_serve(args: argparse.Namespace) -> int:
    from fleet.service import serve
    from fleet.settings import FleetSettings

    overrides = {k: v for k, v in dict(mqtt_url=args.mqtt, db_url=args.db, http=args.http, client_id=args.client_id,
                                       share_group=args.share_group, tls_cert=args.tls_cert,
                                       tls_key=args.tls_key).items() if v is not None}
    if args.kit:
        overrides["kits"] = args.kit
    serve(FleetSettings(**overrides))
    return 0


def _fleet_user(args: argparse.Namespace) -> int:
    """``popkit fleet user add|disable``: the API's users, straight in the fleet's database (the first
    ops user has no one to ask through the API)."""
    import re

    from fleet.auth.passwords import MIN_LENGTH, hash_password, new_password
    from fleet.auth.users import NAME_PATTERN, RESERVED_NAMES, UserStore
    from fleet.settings import FleetSettings
    from fleet.store import Store

    if not re.match(NAME_PATTERN, args.name) or args.name in RESERVED_NAMES:
        print(f"popkit fleet user: {args.name!r} is not a usable name (lower case letters, digits, . _ @ -; "
              f"not {', '.join(sorted(RESERVED_NAMES))})", file=sys.stderr)
        return 3
    store = Store.open(args.db or FleetSettings().db_url)
    try:
        users = UserStore(store.engine)
        if args.user_command == "disable":
            if users.set_disabled(args.name) is None:
                print(f"popkit fleet user: no user {args.name!r}", file=sys.stderr)
                return 3
            print(f"{args.name} disabled: every token of theirs stopped working")
            return 0
        if (args.kit and args.role != "crew") or (args.role == "crew" and not args.kit):
            print("popkit fleet user: --kit is for crew users, and a crew user needs at least one", file=sys.stderr)
            return 3
        if (args.venue and args.role != "venue") or (args.role == "venue" and not args.venue):
            print("popkit fleet user: --venue is for venue users, and a venue user needs at least one", file=sys.stderr)
            return 3
        password = sys.stdin.readline().rstrip("\n") if args.password_stdin else new_password()
        if len(password) < MIN_LENGTH:
            print(f"popkit fleet user: the password needs at least {MIN_LENGTH} characters", file=sys.stderr)
            return 3
        users.put(args.name, args.role, kits=args.kit, venues=args.venue, password_hash=hash_password(password),
                  disabled=False)
    finally:
        store.close()
    scope = f" (kits {', '.join(args.kit)})" if args.kit else f" (venues {', '.join(args.venue)})" if args.venue else ""
    print(f"{args.name}: {args.role}{scope}")
    if not args.password_stdin:  # shown this once: it is stored only as its argon2id hash
        print(f"password: {password}")
    return 0


def _agent_run(args: argparse.Namespace) -> int:
    from agent.daemon import run_agent
    from agent.errors import AgentError
    from agent.settings import load_settings

    parts = None
    if args.simulate:  # the simulated kit's parts, handed to the agent in place of hardware
        from simulators.kit import Scenario, ScenarioError, SimulatedKit

        try:
            parts = SimulatedKit(Scenario.parse(args.scenario))
        except ScenarioError as exc:
            print(f"popkit agent run: {exc}", file=sys.stderr)
            return 3
    try:  # the service's file comes through systemd's EnvironmentFile; --env reads one by hand
        settings = load_settings(Path(args.env) if args.env else None, dict(mqtt_url=args.mqtt, agent_data=args.data),
                                 default_file=None)
        return run_agent(args.kit, settings, parts)
    except AgentError as exc:
        print(f"popkit agent run: {exc}", file=sys.stderr)
        return 3


def _kit_settings(args: argparse.Namespace, simulate: bool = False):
    """The service's settings (its file, /etc/popkit/agent.env or --env) under the flags: beside the
    agent these commands reach its broker and its data folder (/var/lib/popkit) with no flags."""
    from agent.settings import SERVICE_DATA, load_settings

    flags = dict(mqtt_url=args.mqtt, agent_data=args.data)
    if simulate:  # a simulated kit is never the service's: its own broker and var/agent, unless told
        return load_settings(Path(args.env) if args.env else None, flags, default_file=None)
    return load_settings(Path(args.env) if args.env else None, flags, default_data=SERVICE_DATA)


def _kit_up(args: argparse.Namespace) -> int:
    import os
    from contextlib import ExitStack

    from agent.errors import AgentError
    from agent.kitup import kit_up
    from kits.manifest import ManifestError, load_manifest
    from simulators.kit import Scenario, ScenarioError

    try:
        manifest = load_manifest(args.manifest)
        scenario = Scenario.parse(args.scenario) if args.simulate else None
        settings = _kit_settings(args, args.simulate)
    except (ManifestError, ScenarioError, AgentError) as exc:
        print(f"popkit kit up: {exc}", file=sys.stderr)
        return 3
    if args.scenario and not args.simulate:
        print("popkit kit up: --scenario sets a simulated kit's condition; add --simulate", file=sys.stderr)
        return 3
    # With --simulate and no broker named anywhere, the simulated kit starts one of its own.
    named = args.mqtt or args.env or "POPKIT_MQTT_URL" in os.environ
    mqtt = settings.mqtt_url if named or not args.simulate else None
    try:
        if scenario is None:
            return kit_up(manifest, mqtt, settings.agent_data)
        from popkit.simkit import simulated_kit

        with ExitStack() as stack:  # the simulated kit's broker and firmware stop after kit up's link
            settings.agent_data.mkdir(parents=True, exist_ok=True)
            mqtt, parts = simulated_kit(manifest, mqtt, settings.agent_data, scenario, stack)
            return kit_up(manifest, mqtt, settings.agent_data, parts)
    except (AgentError, PermissionError) as exc:  # PermissionError: the data folder, with no agent running
        print(f"popkit kit up: {exc}", file=sys.stderr)
        return 3


def _bridge_target(args: argparse.Namespace):
    if not args.bridge_to:
        return None
    host, _, port = args.bridge_to.rpartition(":")
    if not host or not port.isdigit() or not args.bridge_ca:
        raise ValueError("--bridge-to takes HOST:PORT of the fleet broker, and --bridge-ca its CA certificate")
    if not Path(args.bridge_ca).is_file():
        raise ValueError(f"--bridge-ca {args.bridge_ca}: no such file")
    return host, int(port), Path(args.bridge_ca)


def _wifi(path: str | None) -> dict | None:
    """The venue Wi-Fi for the ESP32s, from a JSON file ({"ssid", "password"}): never a flag, so the
    password is in no shell history."""
    if path is None:
        return None
    import json

    try:
        wifi = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"--wifi {path}: cannot read it as JSON ({exc})") from None
    if not isinstance(wifi, dict):
        raise ValueError(f"--wifi {path}: must be a JSON object {{\"ssid\": ..., \"password\": ...}}")
    return wifi


def _kit_network(args: argparse.Namespace):
    from popkit.kitfiles import DEFAULT_AP_ADDRESS, KitFilesError, KitNetwork

    if args.network == "router" and not args.kit_address:
        raise KitFilesError("--network router needs --kit-address: the Pi's reserved address on the router's LAN, "
                            "with its prefix (e.g. 192.168.8.2/24)")
    return KitNetwork(args.network, args.kit_address or DEFAULT_AP_ADDRESS, args.interface or "", args.gateway,
                      args.channel)


def _kit_provision(args: argparse.Namespace) -> int:
    import os

    from kits.manifest import ManifestError, load_manifest
    from kits.tickets import EventKey, KeyFileError
    from popkit.kitfiles import KitFilesError, keep_release_pub, kit_wifi, write_pi_files
    from popkit.provision import ProvisionError, provision, register_kit

    try:
        manifest = load_manifest(args.manifest)
        net = _kit_network(args)
        # The ESP32s reach the broker at the Pi's fixed address on the kit network (--broker: a bench's own)
        broker = args.broker or f"{net.host}:{8883 if args.tls else 1883}"
        host, _, port = broker.rpartition(":")
        out = Path(args.out or os.environ.get("POPKIT_PROVISION_DIR") or Path.home() / ".popkit" / "provision")
        wifi = _wifi(args.wifi) or kit_wifi(out, manifest.id)  # the kit's own Wi-Fi: generated once, then kept
        done = provision(manifest, out, broker_host=host or broker, broker_port=int(port) if host else None,
                         rotate=tuple(args.rotate), revoke=tuple(args.revoke), tls=args.tls,
                         bridge_to=_bridge_target(args), wifi=wifi,
                         event_keys=tuple(EventKey.load(Path(f)) for f in args.event_key))
        if args.release_pub:
            keep_release_pub(done.folder, Path(args.release_pub))
        pi = write_pi_files(done, manifest, Path(args.manifest).read_text(encoding="utf-8"), net)
        fleet = args.fleet or os.environ.get("POPKIT_FLEET_URL")
        registered = None
        if fleet:
            token = os.environ.get("POPKIT_TOKEN")
            if not token:
                raise ProvisionError("registering with the fleet needs an ops token in POPKIT_TOKEN "
                                     "(POST /api/v1/auth/token); the credentials are written, the kit is not registered")
            registered = register_kit(Path(args.manifest).read_text(encoding="utf-8"), manifest.id, fleet, token)
    except (ManifestError, ProvisionError, KeyFileError, KitFilesError, ValueError) as exc:
        print(f"popkit kit provision: {exc}", file=sys.stderr)
        return 3
    # names only: the passwords stay in the folder's 0600 files, never on a terminal or in a log
    for what, names in (("new", done.created), ("rotated", done.rotated), ("revoked", done.revoked)):
        if names:
            print(f"{what}: {', '.join(names)}")
    print(f"broker: password_file {done.passwd}, acl_file {done.acl}")
    if done.tls is not None:
        print(f"broker TLS: cafile {done.tls.ca}, certfile {done.tls.cert}, keyfile {done.tls.key}")
    if done.revoked or done.rotated:
        print("send the broker SIGHUP now: it reloads the files and disconnects what was revoked or rotated")
    print(f"device configs: {done.folder / 'devices'}/ (the fleet's: {done.fleet_file})")
    if registered is not None:
        print(f"registered with the fleet at {fleet}: kit {registered['id']!r}, {registered['devices_total']} devices")
    if args.bridge_to:
        print(f"bridge to the fleet broker: {done.conf_dir / 'bridge.conf'} (the kit broker's include_dir "
              f"{done.conf_dir}); the fleet broker needs account popkit-bridge-{manifest.id} from this folder")
    print(f"kit network: {'the Pi is its access point' if net.topology == 'ap' else 'the travel router'}, "
          f"Wi-Fi {wifi['ssid']!r} (its password in {done.folder / 'credentials.json'}); the broker at {broker}")
    print(f"the Pi's files: {pi}/ (copy that folder to the Pi, then: sudo popkit kit install FOLDER, "
          f"or sudo deploy/install-kit.sh FOLDER from a clone; docs/pi-install.md)")
    return 0


def _kit_install(args: argparse.Namespace) -> int:
    from popkit.kitinstall import run

    return run(args)


def _kit_down(args: argparse.Namespace) -> int:
    from agent.errors import AgentError
    from agent.kitdown import kit_down
    from kits.manifest import ManifestError, load_manifest

    try:
        manifest = load_manifest(args.manifest)
        settings = _kit_settings(args)
        return kit_down(manifest, settings.mqtt_url, settings.agent_data, wait_s=args.wait)
    except (ManifestError, AgentError, PermissionError) as exc:  # PermissionError: as kit up
        print(f"popkit kit down: {exc}", file=sys.stderr)
        return 3


def _sim_devices(args: argparse.Namespace) -> int:
    from simulators.devices import run_devices

    return run_devices(args.kit, args.mqtt, Path(args.data))


def _sim_fleet(args: argparse.Namespace) -> int:
    from simulators.swarm import Swarm, SwarmError, run_cli

    try:
        swarm = Swarm(args.kits, args.devices_per_kit, args.mqtt, args.period, args.seed, power=not args.no_power)
        if args.register:
            from popkit.kitregister import register_kits

            register_kits(args.register, swarm.manifests())
            print(f"registered {args.kits} kits ({len(swarm.devices)} devices) in {args.register.split('@')[-1]}",
                  flush=True)
        return run_cli(swarm, args.duration)
    except SwarmError as exc:
        print(f"popkit sim fleet: {exc}", file=sys.stderr)
        return 3


def _demo(args: argparse.Namespace) -> int:
    from popkit.demo import run_demo

    return run_demo(mqtt_url=args.mqtt, http=args.http, data_dir=Path(args.data), kit=args.kit)


def _contract_export(args: argparse.Namespace) -> int:
    from kits.contract import export

    for path in export(Path(args.dir)):
        print(path)
    return 0


def _tickets_issue(args: argparse.Namespace) -> int:
    from kits.tickets import issue_batch

    b = issue_batch(args.event, args.count, Path(args.out), tier=args.tier, valid_from=args.valid_from,
                    valid_until=args.valid_until, key_file=Path(args.key_file) if args.key_file else None,
                    sheet=Path(args.qr_sheet) if args.qr_sheet else None)
    print(f"{b.count} {args.tier} tickets for {args.event} -> {b.out}" + (f" (QR sheet {b.sheet})" if b.sheet else ""))
    print(f"valid from {b.not_before} until {b.not_after}")
    print(f"event key {'created in' if b.key_created else 'reused from'} {b.key_file}: keep it out of git")
    return 0


def _fleet_call(what: str, method: str, url: str, body: dict, timeout: float) -> dict | None:
    """One authenticated call to the fleet's API (popkit/fleetapi.py); None after printing why it failed."""
    from popkit.fleetapi import FleetRefused, call

    fleet, path = url.split("/api/", 1)
    try:
        return call(fleet, method, "/api/" + path, body, timeout)  # type: ignore[return-value]
    except FleetRefused as exc:
        print(f"popkit tickets {what}: {exc}", file=sys.stderr)
    return None


def _tickets_revoke(args: argparse.Namespace) -> int:
    """Through the fleet (POST /api/v1/events/{event}/revocations), or with --kit at the kit itself."""
    if args.kit:
        return _tickets_revoke_at_kit(args)
    body = _fleet_call("revoke", "POST", f"{args.fleet.rstrip('/')}/api/v1/events/{args.event}/revocations",
                       {"tickets": args.tickets}, args.timeout)
    if body is None:
        return 2
    print(f"revoked {len(body['tickets'])} ticket(s) for {body['event_id']}")
    for p in body["pushed"]:
        print(f"  {p['device_id']}: config version {p['version']} ({len(p['revoked'])} revoked for {body['event_id']})")
    return 0


def _tickets_revoke_at_kit(args: argparse.Namespace) -> int:
    """On the kit's Pi, no uplink needed: the running agent takes it (its control socket) and the
    doors and the hub refuse the tickets at once; with no agent running, the request is left at the
    kit broker for it (agent/tickets.py)."""
    import getpass
    import os

    from agent import control
    from agent.settings import SettingsFileError, load_settings
    from agent.tickets import UnknownEvent, revoke_request
    from kits.manifest import ManifestError, load_manifest

    try:
        manifest = load_manifest(args.kit)
        settings = load_settings(Path(args.env) if args.env else None, {"mqtt_url": args.mqtt, "agent_data": args.data},
                                 default_data=Path("/var/lib/popkit") if not args.data else None)
    except (ManifestError, SettingsFileError) as exc:
        print(f"popkit tickets revoke: {exc}", file=sys.stderr)
        return 3
    by = args.by or os.environ.get("SUDO_USER") or getpass.getuser()
    try:
        answers = list(control.request(control.socket_path(settings.agent_data), manifest.id, "revoke",
                                       timeout=args.timeout, event=args.event, tickets=args.tickets, by=by))
        new = answers[-1].get("revoked", [])
        print(f"revoked at kit {manifest.id} by {by}: {len(new)} new ticket(s) for {args.event}"
              + (f" ({' '.join(new)})" if new else " (all were revoked already)"))
        print("the doors and the hub refuse them now; the fleet gets them when the uplink is up")
        return 0
    except control.NoAgent:
        pass  # no agent running here: leave the request at the kit broker for it
    except control.ControlError as exc:
        print(f"popkit tickets revoke: {exc}", file=sys.stderr)
        return 2
    try:
        took, _known = revoke_request(manifest.id, settings.mqtt_url, args.event, args.tickets, by, timeout=args.timeout)
    except UnknownEvent as exc:
        print(f"popkit tickets revoke: {exc}", file=sys.stderr)
        return 2
    except (OSError, ConnectionError) as exc:
        print(f"popkit tickets revoke: cannot reach the kit broker: {exc}", file=sys.stderr)
        return 2
    if took is None:
        print(f"popkit tickets revoke: no agent took it within {args.timeout:.0f} s; the request waits at the kit "
              "broker and the doors refuse the tickets once the agent runs (systemctl start popkit-agent)",
              file=sys.stderr)
        return 1
    print(f"revoked at kit {manifest.id} by {by}: {' '.join(took)} for {args.event}")
    return 0


def _tickets_key(args: argparse.Namespace) -> int:
    """PUT /api/v1/events/{event}/key: the event's key, from its key file, to the scanners' configs."""
    import time

    from kits.tickets import EventKey, KeyFileError, default_key_file, parse_iso

    try:
        key = EventKey.load(Path(args.key_file) if args.key_file else default_key_file(args.event))
        if key.event != args.event:
            raise KeyFileError(f"the key file holds the key for event {key.event}, not {args.event}")
        not_before = int(parse_iso(args.not_before, "--not-before").timestamp()) if args.not_before else 0
        expires = int(parse_iso(args.expires, "--expires").timestamp())
    except (KeyFileError, ValueError) as exc:
        print(f"popkit tickets key: {exc}", file=sys.stderr)
        return 2
    if expires <= max(not_before, int(time.time())):
        print(f"popkit tickets key: --expires {args.expires} is "
              + ("not after --not-before" if expires <= not_before else "already past")
              + ": a scanner would drop the key at once; give the event's end plus a margin", file=sys.stderr)
        return 2
    body = _fleet_call("key", "PUT", f"{args.fleet.rstrip('/')}/api/v1/events/{args.event}/key",
                       {"key": key.secret.hex(), "not_before": not_before, "expires": expires,
                        "kits": args.to_kit or None}, args.timeout)
    if body is None:
        return 2
    print(f"key for {args.event} on {len(body['pushed'])} scanner(s), valid until {args.expires}")
    for p in body["pushed"]:
        print(f"  {p['device_id']}: config version {p['version']}")
    return 0


def _device(args: argparse.Namespace) -> int:
    from popkit import firmware

    try:
        if args.device_command == "build":
            failed = 0
            for role in args.role or firmware.ROLES:
                for port in args.port or firmware.PORTS:
                    try:
                        print(f"{role} ({port}): {firmware.build(role, port)}")
                    except firmware.FirmwareError as exc:
                        print(f"popkit device: {exc}", file=sys.stderr)
                        failed += 1
            return 2 if failed else 0
        if args.device_command == "run":
            return firmware.run(args.role, Path(args.config), budget_kb=args.budget_kb)
        from popkit import flashtree

        return flashtree.flash(args.role, Path(args.config), device_port=args.port,
                               root=Path(args.root) if args.root else None, wifi=Path(args.wifi) if args.wifi else None,
                               sim=Path(args.sim) if args.sim else None, force=args.force, dry_run=args.dry_run)
    except firmware.FirmwareError as exc:
        print(f"popkit device: {exc}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="popkit", description="PopKit: the edge stack for pop-up event kits.")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    sub = p.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run a whole simulated kit, a broker and the fleet on this machine")
    demo.add_argument("--mqtt", help="use this broker instead of starting one (mqtt://host:port)")
    demo.add_argument("--http", default="127.0.0.1:8000", help="where the fleet's page and API listen")
    demo.add_argument("--data", default="var/demo", help="folder for the demo's database and outboxes")
    demo.add_argument("--kit", default=str(Path(__file__).resolve().parent.parent / "kits/examples/demo.toml"))
    demo.set_defaults(func=_demo)

    fleet = sub.add_parser("fleet", help="the fleet service").add_subparsers(dest="fleet_command", required=True)
    serve = fleet.add_parser("serve", help="ingest from the broker, store, and serve the API")
    serve.add_argument("--mqtt", help="broker URL (POPKIT_MQTT_URL)")
    serve.add_argument("--db", help="SQLAlchemy database URL (POPKIT_DB_URL)")
    serve.add_argument("--http", help="HOST:PORT to listen on (POPKIT_HTTP)")
    serve.add_argument("--client-id", help="MQTT client id of this worker (POPKIT_CLIENT_ID)")
    serve.add_argument("--share-group", help="MQTT shared-subscription group for several workers")
    serve.add_argument("--kit", action="append", help="register this kit manifest at start (repeatable)")
    serve.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this PEM certificate (POPKIT_TLS_CERT)")
    serve.add_argument("--tls-key", metavar="FILE", help="the certificate's PEM private key (POPKIT_TLS_KEY)")
    serve.set_defaults(func=_fleet_serve)
    user = fleet.add_parser("user", help="the API's users (ops, crew, venue)").add_subparsers(
        dest="user_command", required=True)
    uadd = user.add_parser("add", help="create a user, or reset one's role, scope and password")
    uadd.add_argument("name")
    uadd.add_argument("--role", required=True, choices=("ops", "crew", "venue"),
                      help="ops: the whole fleet; crew: their kits; venue: their venues' lighting")
    uadd.add_argument("--kit", action="append", default=[], help="a crew user's kit (repeatable)")
    uadd.add_argument("--venue", action="append", default=[], help="a venue user's venue (repeatable)")
    uadd.add_argument("--password-stdin", action="store_true",
                      help="read the password from stdin instead of generating one (printed once)")
    udis = user.add_parser("disable", help="stop a user signing in; their tokens stop working at once")
    udis.add_argument("name")
    for p_ in (uadd, udis):
        p_.add_argument("--db", help="SQLAlchemy database URL of the fleet (POPKIT_DB_URL)")
        p_.set_defaults(func=_fleet_user)

    agent = sub.add_parser("agent", help="the kit's Pi agent").add_subparsers(dest="agent_command", required=True)
    run = agent.add_parser("run", help="drive the kit's hardware and report to the fleet")
    run.add_argument("--kit", required=True, help="kit manifest (TOML)")
    run.add_argument("--mqtt", help="broker URL (POPKIT_MQTT_URL, default mqtt://127.0.0.1:1883)")
    run.add_argument("--data", help="folder for the outbox and the control socket (POPKIT_AGENT_DATA, default var/agent)")
    run.add_argument("--env", metavar="FILE", help="read POPKIT_* settings from this file, as systemd's "
                                                   "EnvironmentFile (the environment and flags win)")
    run.add_argument("--simulate", action="store_true", help="start simulators for the manifest's hardware")
    run.add_argument("--scenario", help="with --simulate, the simulated parts' condition (see popkit kit up)")
    run.set_defaults(func=_agent_run)

    kit = sub.add_parser("kit", help="power a kit up (self-test) or down").add_subparsers(dest="kit_command", required=True)
    up = kit.add_parser("up", help="self-test every part of the kit: ready, degraded or not ready, and why")
    up.add_argument("manifest", help="kit manifest (TOML)")
    up.add_argument("--mqtt", help="the kit's broker (POPKIT_MQTT_URL, else the settings file's; with --simulate, "
                                   "one of its own)")
    up.add_argument("--data", help="the agent's data folder (POPKIT_AGENT_DATA, else the settings file's, else "
                                   "/var/lib/popkit; with --simulate var/agent)")
    up.add_argument("--env", metavar="FILE", help="the agent's settings file (default /etc/popkit/agent.env)")
    up.add_argument("--simulate", action="store_true", help="simulate the whole kit on this machine")
    up.add_argument("--scenario", help="the simulated kit's condition: paper=out,cover=open,soc=35,load=12,"
                                       "vanish=ID+ID")
    up.set_defaults(func=_kit_up)
    down = kit.add_parser("down", help="end of event: flush the outbox, print and publish what the kit did")
    down.add_argument("manifest", help="kit manifest (TOML)")
    down.add_argument("--mqtt", help="the kit's broker (POPKIT_MQTT_URL, else the settings file's)")
    down.add_argument("--data", help="the agent's data folder (POPKIT_AGENT_DATA, else the settings file's, else "
                                     "/var/lib/popkit)")
    down.add_argument("--env", metavar="FILE", help="the agent's settings file (default /etc/popkit/agent.env)")
    down.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the outbox to drain")
    down.set_defaults(func=_kit_down)
    prov = kit.add_parser("provision", help="each device's own broker credentials, and the broker's password "
                                            "file and ACL pinning each to its topic tree")
    prov.add_argument("manifest", help="kit manifest (TOML)")
    prov.add_argument("--out", help="folder for the secrets, outside git (POPKIT_PROVISION_DIR, "
                                    "default ~/.popkit/provision)")
    prov.add_argument("--broker", help="host:port the devices reach the broker at (default: the Pi's --kit-address, "
                                       "port 8883)")
    prov.add_argument("--network", choices=("ap", "router"), default="ap",
                      help="the kit's own Wi-Fi: ap, the Pi is its access point (default); router, a travel router")
    prov.add_argument("--kit-address", metavar="IP/PREFIX", help="the Pi's fixed address on the kit network "
                      "(default 10.42.0.1/24 with ap; with router, its reserved address on the router's LAN)")
    prov.add_argument("--interface", help="the Pi's interface on the kit network (default wlan0 with ap, eth0 with router)")
    prov.add_argument("--gateway", help="with router: the router's address (default: the first of the subnet)")
    prov.add_argument("--channel", type=int, default=6, help="with ap: the 2.4 GHz channel (default 6)")
    prov.add_argument("--no-tls", dest="tls", action="store_false",
                      help="plain MQTT (a bench on loopback only: passwords would cross the network in clear)")
    prov.add_argument("--fleet", metavar="URL", help="register the kit with the fleet API at URL (POPKIT_FLEET_URL); "
                                                     "an ops token in POPKIT_TOKEN")
    prov.add_argument("--wifi", metavar="FILE", help="JSON {ssid, password} of the kit's Wi-Fi, for the ESP32s' files "
                                                     "and the Pi's access point (default: one generated and kept)")
    prov.add_argument("--event-key", action="append", default=[], metavar="FILE",
                      help="an event's key file (popkit tickets): the scanners' files check its tickets")
    prov.add_argument("--bridge-to", metavar="HOST:PORT", help="the fleet broker the kit broker bridges to (TLS)")
    prov.add_argument("--bridge-ca", metavar="FILE", help="the fleet broker's CA certificate, for --bridge-to")
    prov.add_argument("--release-pub", metavar="FILE", help="the release public key (popkit release keygen's "
                      "release.pub): the agent keeps only bundles it signed (/etc/popkit/release.pub; kept for "
                      "the next provisioning)")
    prov.add_argument("--rotate", action="append", default=[], metavar="DEVICE", help="new credentials for DEVICE")
    prov.add_argument("--revoke", action="append", default=[], metavar="DEVICE",
                      help="remove DEVICE's credentials (a lost scanner)")
    prov.set_defaults(func=_kit_provision)
    inst = kit.add_parser("install", help="on the Pi, as root: put the provisioned files in place, the agent's user "
                                          "and virtualenv, enable the services (idempotent)")
    from popkit.kitinstall import add_arguments as _install_arguments

    _install_arguments(inst)
    inst.set_defaults(func=_kit_install)

    sim = sub.add_parser("sim", help="simulated hardware").add_subparsers(dest="sim_command", required=True)
    devices = sim.add_parser("devices", help="simulated ESP32 scanners and lighting controllers of a kit")
    devices.add_argument("--kit", required=True)
    devices.add_argument("--mqtt", default="mqtt://127.0.0.1:1883")
    devices.add_argument("--data", default="var/sim")
    devices.set_defaults(func=_sim_devices)
    swarm = sim.add_parser("fleet", help="many simulated kits (agent, power bank, ESP32s) in one process, for load "
                                         "tests and demos")
    swarm.add_argument("--kits", type=int, required=True, help="how many kits (ids k0001, k0002, ...)")
    swarm.add_argument("--devices-per-kit", type=int, default=5, help="the agent and its power bank, then scanners "
                       "and lighting controllers, about half each of the rest (default 5)")
    swarm.add_argument("--no-power", action="store_true", help="ESP32s only: no agent, no power bank")
    swarm.add_argument("--mqtt", default="mqtt://127.0.0.1:1883", help="broker URL")
    swarm.add_argument("--period", type=float, default=5.0, help="seconds between each device's telemetry")
    swarm.add_argument("--register", metavar="DB_URL", help="first register the kits in this fleet database")
    swarm.add_argument("--seed", type=int, help="seed for the readings and check-ins (boots stay random)")
    swarm.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    swarm.set_defaults(func=_sim_fleet)

    contract = sub.add_parser("contract", help="the wire contract").add_subparsers(dest="contract_command", required=True)
    exp = contract.add_parser("export", help="write the JSON Schemas")
    exp.add_argument("dir", nargs="?", default="docs/protocol")
    exp.set_defaults(func=_contract_export)

    device = sub.add_parser("device", help="the ESP32 firmware").add_subparsers(dest="device_command", required=True)
    bld = device.add_parser("build", help="cross-compile every role's firmware (mpy-cross)")
    bld.add_argument("--role", action="append", choices=("scanner", "lighting"), help="only this role (repeatable)")
    bld.add_argument("--port", action="append", choices=("unix", "esp32"), help="only this port (repeatable)")
    bld.set_defaults(func=_device)
    drun = device.add_parser("run", help="run a role in the unix-port micropython against the simulators")
    drun.add_argument("--role", required=True, choices=("scanner", "lighting"))
    drun.add_argument("--config", required=True, help="the role's JSON config (kit, device, broker, ...)")
    drun.add_argument("--budget-kb", type=int, default=80,  # popkit.firmware.RUN_BUDGET_KB (imported lazily)
                      help="heap for the firmware besides its ROMFS image (the tests hold each role to 64)")
    drun.set_defaults(func=_device)
    fl = device.add_parser("flash", help="write the tree a board boots (main.py, the role's modules, <role>.json, "
                           "data/) to an ESP32 through mpremote, or into a folder for the unix port")
    fl.add_argument("--role", required=True, choices=("scanner", "lighting"))
    to = fl.add_mutually_exclusive_group(required=True)
    to.add_argument("--port", help="the ESP32's serial port, e.g. /dev/ttyUSB0")
    to.add_argument("--root", metavar="DIR", help="a folder for the unix port instead (boot it: cd DIR && micropython main.py)")
    fl.add_argument("--config", required=True, metavar="FILE", help="the device file from `popkit kit provision` "
                    "(devices/<device>.json), written whole as <role>.json")
    fl.add_argument("--wifi", metavar="FILE", help="JSON {ssid, password}: overrides the Wi-Fi in the device file")
    fl.add_argument("--sim", metavar="FILE", help="--root only: JSON merged into the config, e.g. the simulators' endpoints "
                    "({\"uart\": [host, port]}; lighting {\"pwm\": [...], \"dmx\": [...]})")
    fl.add_argument("--force", action="store_true", help="replace another device the target holds (its data/ too)")
    fl.add_argument("--dry-run", action="store_true", help="print the mpremote commands (or the files) only")
    fl.set_defaults(func=_device)

    from popkit.release import add_parser as add_release  # popkit release keygen|build|verify (issue 18)
    release = add_release(sub)
    from popkit.updates_cli import add_parsers as add_updates  # release upload, rollout, kit hold
    add_updates(sub, kit, release)
    from popkit.retail_cli import add_parsers as add_retail  # retail sku|import|export (issue 19)
    add_retail(sub)
    from popkit.till_cli import add_parsers as add_till  # till login add|list|remove (issue 19)
    add_till(sub)

    tickets = sub.add_parser("tickets", help="signed event tickets").add_subparsers(dest="tickets_command", required=True)
    iss = tickets.add_parser("issue", help="issue a batch of tickets into a CSV (ticket_id, tier, payload)")
    iss.add_argument("--event", required=True, type=str.upper, help="event id, e.g. FEST25")
    iss.add_argument("--count", required=True, type=int)
    iss.add_argument("--out", required=True, help="CSV to write (never overwritten)")
    iss.add_argument("--tier", default="GA", type=str.upper)
    iss.add_argument("--valid-from", help="ISO 8601 with a UTC offset (default: now)")
    iss.add_argument("--valid-until", help="ISO 8601 with a UTC offset (default: 30 days after --valid-from)")
    iss.add_argument("--key-file", help="the event key (default var/keys/EVENT.key, created 0600)")
    iss.add_argument("--qr-sheet", help="also write a PNG sheet of the QR codes (needs the qr extra)")
    iss.set_defaults(func=_tickets_issue)
    rev = tickets.add_parser("revoke", help="revoke tickets on every scanner: through the fleet, or with --kit on "
                             "the kit's Pi (no uplink needed)")
    rev.add_argument("--event", required=True, type=str.upper, help="event id, e.g. FEST25")
    rev.add_argument("tickets", nargs="+", type=str.upper, metavar="TICKET", help="ticket ids to revoke")
    rev.add_argument("--fleet", default="http://127.0.0.1:8000", help="the fleet API's base URL")
    rev.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the fleet or the agent")
    rev.add_argument("--kit", metavar="MANIFEST", help="on the kit's Pi: revoke at this kit's doors and hub at once "
                     "(through the running agent), sent to the fleet when the uplink is up")
    rev.add_argument("--env", metavar="FILE", help="with --kit: the agent's settings file (default /etc/popkit/agent.env)")
    rev.add_argument("--mqtt", help="with --kit: the kit broker, instead of the settings file's")
    rev.add_argument("--data", help="with --kit: the agent's data folder (default /var/lib/popkit)")
    rev.add_argument("--by", help="with --kit: who revokes, for the attendance (default: your login)")
    rev.set_defaults(func=_tickets_revoke)
    key = tickets.add_parser("key", help="give the scanners an event's key with its window (through the fleet)")
    key.add_argument("--event", required=True, type=str.upper, help="event id, e.g. FEST25")
    key.add_argument("--key-file", help="the event key (default var/keys/EVENT.key)")
    key.add_argument("--not-before", help="ISO 8601 with a UTC offset: its tickets verify from then (default: at once)")
    key.add_argument("--expires", required=True, help="ISO 8601 with a UTC offset: the scanners drop the key then "
                     "(the event's end plus a margin)")
    key.add_argument("--to-kit", action="append", default=[], metavar="KIT", help="only this kit's scanners (repeat)")
    key.add_argument("--fleet", default="http://127.0.0.1:8000", help="the fleet API's base URL")
    key.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the fleet")
    key.set_defaults(func=_tickets_key)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a clear one-line error for the operator; -v shows the traceback
        from kits.manifest import ManifestError

        if isinstance(exc, (ManifestError, ValueError, FileNotFoundError)) and not args.verbose:
            print(f"popkit: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
