"""A kit broker bridged to a fleet broker, both provisioned as `popkit kit provision` makes them.

Two folders, as in the field: the fleet side's (its TLS, the fleet's account, and the kit's bridge
account it was given) and the kit side's (the devices' accounts, the bridge config). The kit side's
bridge password is the one the fleet broker knows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from kits.manifest import load_manifest
from popkit.broker import MosquittoBroker, free_port, mosquitto_binary
from popkit.provision import Provisioned, bridge_account, provision


@dataclass
class Bridged:
    kit: str
    fleet_broker: MosquittoBroker
    kit_broker: MosquittoBroker
    fleet_side: Provisioned
    kit_side: Provisioned

    @property
    def fleet_url(self) -> str:
        return f"mqtts://127.0.0.1:{self.fleet_broker.port}?account={self.fleet_side.fleet_file}"

    def kit_url(self, device: str) -> str:
        """How ``device`` (the agent, or a device it stands in for) logs in to the kit broker."""
        return f"mqtts://127.0.0.1:{self.kit_broker.port}?account={self.kit_side.device_file(device)}"

    def bridge_logged_in(self) -> bool:
        """The fleet broker's word that the kit's bridge logged in (at least once)."""
        return f"u'{bridge_account(self.kit)}'" in self.fleet_broker.log()

    def close(self) -> None:
        self.kit_broker.close()
        self.fleet_broker.close()


def start_bridged(tmp_path: Path, manifest_path: Path, retry: str = "1 3") -> Bridged:
    """Both brokers running, the bridge retrying every ``retry`` (Mosquitto's restart_timeout base
    and cap: a venue's is 2 30; a test's outages are short)."""
    if mosquitto_binary() is None:
        pytest.fail("mosquitto is not installed (apt-get install mosquitto)")
    manifest = load_manifest(manifest_path)
    kit = manifest.id
    fleet_port, kit_port = free_port(), free_port()
    fleet_side = provision(manifest, tmp_path / "fleet-side", broker_port=fleet_port)
    kit_side = provision(manifest, tmp_path / "kit-side", broker_port=kit_port,
                         bridge_to=("127.0.0.1", fleet_port, fleet_side.tls.ca))
    fleet_side = provision(manifest, fleet_side.folder, broker_port=fleet_port,
                           bridge_to=("127.0.0.1", fleet_port, fleet_side.tls.ca))
    conf = kit_side.conf_dir / "bridge.conf"
    text = conf.read_text().replace(kit_side.accounts[bridge_account(kit)], fleet_side.accounts[bridge_account(kit)])
    conf.write_text(text.replace("restart_timeout 2 30", f"restart_timeout {retry}"))
    fleet_broker = MosquittoBroker(port=fleet_port, data_dir=tmp_path / "fleet-broker", password_file=fleet_side.passwd,
                                   acl_file=fleet_side.acl, tls=fleet_side.tls).start()
    kit_broker = MosquittoBroker(port=kit_port, data_dir=tmp_path / "kit-broker", password_file=kit_side.passwd,
                                 acl_file=kit_side.acl, tls=kit_side.tls,
                                 extra_conf=f"include_dir {kit_side.conf_dir}\n").start()
    return Bridged(kit, fleet_broker, kit_broker, fleet_side, kit_side)
