"""A real door on trial tells the fleet, and the fleet's rollout follows it (issue 18): the scanner
flashed as `popkit device flash` stages it boots its slot on trial (device/boot/abboot.py), its
retained state says `update: trial`, then `committed` once healthy; ingest stores each state and
moves the door's update in its running rollout (fleet/updates/store.py states_reported), all over
the kit's real broker (TLS, the door's own login)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from fleet.db import now_ms
from fleet.updates.delivery import UpdateDelivery
from fleet.updates.model import Release, Target
from simulators.scanner import ScannerSim
from tests.conftest import wait_until
from tests.device.test_flash_root import boot, flash_root, kit  # noqa: F401  (the fixture)
from tests.device.test_scanner_app import SCANNER

REPO = Path(__file__).resolve().parents[2]


def test_a_door_on_trial_reports_it_and_its_commit_moves_its_rollout(kit, tmp_path):  # noqa: F811
    creds, _key, fleet = kit
    sim = ScannerSim()
    root = flash_root(tmp_path, "scanner", creds.device_file(SCANNER), {"uart": ["127.0.0.1", sim.port]})
    cfg = json.loads((root / "scanner.json").read_text())
    (root / "scanner.json").write_text(json.dumps({**cfg, "trial_s": 2}))
    (root / "trial").write_text("a 0")  # as abboot.switch leaves it: slot a's first boot is a trial

    # The release the flashed slot runs: a trial reports its own fw, and the fleet takes news of the offer's only.
    fw = re.search(r'^FW = "(scanner-([0-9.]+))"', (REPO / "device/apps/scanner/main.py").read_text(), re.M)
    release = Release("scanner", fw.group(2), fw.group(1), {}, "0" * 16, 1, now_ms(), by="ops-test")
    fleet.store.updates.add_release(release, "0" * 64)
    delivery = UpdateDelivery(fleet.store)
    rollout = delivery.create(release, Target(devices=(SCANNER,)), ("100%",), 1.0, 0.5, 60, "ops-test")
    assert [o["device"] for o in delivery.step()] == [SCANNER]

    def update() -> tuple[str, str | None]:
        [u] = fleet.store.updates.updates(rollout.id)
        return u.state, u.reason

    assert update() == ("offered", None)
    dev = boot(root)
    try:
        dev.expect(r"ABBOOT a trial 1", timeout=20)
        wait_until(lambda: update()[0] == "trial", 20, what="the door's trial in its rollout")
        dev.expect(r"UPDATE committed a", timeout=40)
        wait_until(lambda: update() == ("committed", "a"), 20, what="the door's commit in its rollout")
        assert not (root / "trial").exists()
    finally:
        dev.kill()
        sim.close()
    delivery.step()
    assert fleet.store.updates.rollout(rollout.id).state == "done"
