"""What `popkit device flash` writes, held to what the boards and the apps read (popkit/flashtree.py).

The ESP32 cannot run here, so its side is checked two ways: the paths come from the ESP32 board's own
source (its config_path and flash_dir, run with a recording `os`), and its Wi-Fi and lighting layers
run in the unix-port MicroPython with stand-ins for the ESP32's `network` and `machine` modules
(tests/device/esp32fakes), which record what the board was told to join and which pins it drove.

What a crew would see: the board boots the app with the config it was flashed with, joins the kit's
Wi-Fi from the provisioned file, and a lighting controller drives the pins the kit manifest names. A
file without Wi-Fi or outputs, or a target holding another device, is refused before anything is
written, with the file and the field named.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kits.manifest import load_manifest
from kits.tickets import EventKey
from popkit import flashtree
from popkit.firmware import ROLES, FirmwareError, read_manifest
from popkit.provision import provision
from tests.conftest import DEMO_KIT
from tests.device.mpy import DEVICE, micropython_binary

ESP32_BOARD = DEVICE / "boards" / "esp32" / "board.py"
UNIX_BOARD = DEVICE / "boards" / "unix" / "board.py"
FAKES = Path(__file__).resolve().parent / "esp32fakes"
DEVICES = {"scanner": "demo-scanner-1", "lighting": "demo-lights-1"}
WIFI = {"ssid": "kit-7", "password": "made-at-provisioning"}


def popkit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "popkit.cli", *args], capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory) -> Path:
    """The demo kit's device files as `popkit kit provision --wifi` writes them."""
    folder = tmp_path_factory.mktemp("provision")
    provision(load_manifest(DEMO_KIT), folder, wifi=WIFI, event_keys=(EventKey.generate("DOOR-1"),))
    return folder / "devices"


class _RecordingOs:
    def __init__(self):
        self.made: list[str] = []

    def mkdir(self, path):
        self.made.append(path)

    def getenv(self, _name):
        return None


def board_paths(board_py: Path):
    """(config_path, flash_dir, os) as the board's source defines them: its constant assignments and
    those two functions, run here with an `os` that records mkdir."""
    module = ast.parse(board_py.read_text())
    keep = [n for n in module.body
            if (isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant))
            or (isinstance(n, ast.FunctionDef) and n.name in ("config_path", "flash_dir"))]
    fake = _RecordingOs()
    ns: dict = {"os": fake}
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(board_py), "exec"), ns)  # noqa: S102 - our source
    return ns["config_path"], ns["flash_dir"], fake


def board_writes(cmds: list[list[str]]) -> tuple[dict[str, Path], list[str]]:
    """What a list of mpremote calls writes on a board: {absolute board path: local file}, and the
    board paths in the order written. mpremote's remote paths are relative to the board's root."""
    written: dict[str, Path] = {}
    order: list[str] = []
    for cmd in cmds:
        assert cmd[:2] == ["mpremote", "connect"], cmd
        verb = cmd[3:]
        if verb[:2] == ["fs", "cp"]:
            src, dest = verb[2], verb[3]
            assert dest.startswith(":"), cmd
            path = "/" + dest[1:].lstrip("/")
            written[path] = Path(src)
            order.append(path)
    return written, order


@pytest.mark.parametrize("role", ROLES)
def test_an_esp32_flash_writes_every_file_where_the_board_and_the_app_read_it(role, provisioned, tmp_path):
    config_path, flash_dir, fake_os = board_paths(ESP32_BOARD)
    device_file = provisioned / f"{DEVICES[role]}.json"
    cfg = flashtree.load_device_file(role, device_file, "esp32")
    tree = flashtree.stage(role, "esp32", cfg, tmp_path / "tree")
    cmds = flashtree.board_commands(tree, "/dev/ttyUSB0")
    written, order = board_writes(cmds)

    # the config where the board looks for it, and it is the provisioned file whole (Wi-Fi included)
    assert config_path(role) in written, f"nothing written at {config_path(role)}: the board could not boot"
    assert json.loads(written[config_path(role)].read_text()) == json.loads(device_file.read_text())
    assert json.loads(written[config_path(role)].read_text())["wifi"] == WIFI
    # main.py is the boot stage (A/B: docs/updates.md), its module beside it; the pointer names slot a,
    # which holds the compiled app and every module the deploy manifest lists (the boot stage puts the
    # slot first on the board's path)
    assert (tree / "main.py").read_text() == flashtree.BOOT.read_text().replace("ROLE_SAFE_BOOTS", "5")
    assert "import app_main" in (tree / "main.py").read_text() and "/a/app_main.mpy" in written
    assert {"/abboot.mpy", "/safemode.mpy", "/slot"} <= set(written) and (tree / "slot").read_text() == "a"
    for src in read_manifest(role, "esp32").sources:
        name = "app_main" if src.parent.parent.name == "apps" else src.stem
        assert f"/a/{name}.mpy" in written, f"{src.name} is not flashed"
    assert set(written) == {"/" + f for f in flashtree.tree_files(tree)}, "exactly the staged tree"
    # main.py goes last, after it was removed first: a flash cut short boots nothing, not half an app
    assert order[-1] == "/main.py"
    first = next(c for c in cmds if c[3] == "exec")
    assert cmds.index(first) == 0 and "os.remove('main.py')" in first[4]
    assert cmds[1][3:5] == ["reset", "sleep"], "reset with no main.py: a watchdog the old app started stops too"
    assert cmds[-1][3:] == ["reset"]
    # the data folder the exec makes is the one the firmware writes to; it makes slot a too, empties
    # it, and clears what the boot stage kept (a fresh flash is neither on trial nor in a boot loop)
    assert flash_dir() == "/" + flashtree.DATA and f"for d in ('{flashtree.DATA}', 'a')" in first[4]
    assert "os.remove('a/' + n)" in first[4] and "('slot', 'trial', 'boots', 'abwhy')" in first[4]
    assert "if n.endswith('.mpy')" in first[4], "a flat tree's modules from before the A/B layout go"


@pytest.mark.parametrize("role", ROLES)
def test_the_unix_tree_is_the_esp32_tree_and_holds_what_the_unix_board_reads(role, provisioned, tmp_path):
    device_file = provisioned / f"{DEVICES[role]}.json"
    esp = flashtree.stage(role, "esp32", flashtree.load_device_file(role, device_file, "esp32"), tmp_path / "esp")
    unix = flashtree.stage(role, "unix", flashtree.load_device_file(role, device_file, "unix"), tmp_path / "unix")
    assert flashtree.tree_files(esp) == flashtree.tree_files(unix)
    assert (esp / "a" / "board.mpy").read_bytes() != (unix / "a" / "board.mpy").read_bytes(), "each with its own board layer"
    config_path, flash_dir, _ = board_paths(UNIX_BOARD)
    assert (unix / config_path(role)).is_file() and (unix / flash_dir()).is_dir()


def run_esp32_layer(script: str) -> list[str]:
    """``script`` in the unix-port MicroPython with the ESP32 board layer, its libs and the stand-ins."""
    path = os.pathsep.join(str(p) for p in (FAKES, DEVICE / "boards" / "esp32", DEVICE / "lib")) + os.pathsep + ".frozen"
    r = subprocess.run([micropython_binary(), "-c", script], env=dict(os.environ, MICROPYPATH=path),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.splitlines()


def test_the_esp32_board_joins_the_wifi_provisioned_into_its_config(provisioned):
    cfg = json.loads((provisioned / "demo-scanner-1.json").read_text())
    out = run_esp32_layer(
        "import json, board, network\n"
        f"board.configure(json.loads({json.dumps(json.dumps(cfg))}))\n"
        "try:\n board.connect_tcp('192.168.4.1', 8883)\nexcept OSError:\n pass\n"
        "print('JOINED', json.dumps(network.joined))\n")
    assert json.loads(out[-1].removeprefix("JOINED ")) == [[WIFI["ssid"], WIFI["password"]]]


def test_an_esp32_board_without_wifi_in_its_config_says_so_and_joins_nothing():
    out = run_esp32_layer(
        "import json, board, network\n"
        "board.configure({'kit': 'demo', 'device': 'd'})\n"
        "try:\n board.connect_tcp('192.168.4.1', 8883)\nexcept OSError:\n pass\n"
        "print('JOINED', json.dumps(network.joined))\n")
    assert any(line.startswith("WIFI none") for line in out)
    assert out[-1] == "JOINED []"


def test_the_esp32_lighting_layer_drives_the_pins_the_kit_manifest_names(provisioned):
    cfg = json.loads((provisioned / "demo-lights-1.json").read_text())
    out = run_esp32_layer(
        "import json, machine, lighting_hw\n"
        f"o = lighting_hw.outputs(json.loads({json.dumps(json.dumps(cfg))}))\n"
        "print('LOG', json.dumps(machine.log))\n")
    log = [tuple(e) for e in json.loads(out[-1].removeprefix("LOG "))]
    pwm = [e[1] for e in log if e[0] == "PWM"]
    assert pwm == [25, 26, 27, 14] and all(e[2] == 1000 for e in log if e[0] == "PWM"), "r, g, b, w as in demo.toml"
    assert ("Pin", 4, 3, 1) in log, "DE held high (transmit)"
    assert [e[1:3] for e in log if e[0] == "UART"] == [(1, 17)], "DMX on UART1, TX on GPIO17"


def test_the_provisioned_lighting_file_carries_the_manifests_outputs(provisioned):
    cfg = json.loads((provisioned / "demo-lights-1.json").read_text())
    assert cfg["outputs"] == {"pwm": {"pins": [25, 26, 27, 14], "freq": 1000}, "dmx": {"uart": 1, "tx": 17, "de": 4}}
    assert cfg["dmx_slots"] == 24
    assert "outputs" not in json.loads((provisioned / "demo-scanner-1.json").read_text())


@pytest.mark.parametrize("outputs, field, why", [
    ("pwm = { r = 34 }", "outputs.pwm.r", "GPIO34 cannot drive an output"),
    ("pwm = { r = 25, g = 25 }", "outputs", "pwm.g: GPIO25 is already pwm.r"),
    ("dmx = { uart = 0, tx = 17 }", "outputs.dmx.uart", "1 or 2"),
    ("dmx = { uart = 1 }", "outputs.dmx.tx", "required"),
    ("pwm = { r = 25 }\ndmx = { tx = 25 }", "outputs", "dmx.tx: GPIO25 is already pwm.r"),
])
def test_provisioning_refuses_bad_outputs_naming_the_file_device_and_field(tmp_path, outputs, field, why):
    manifest = tmp_path / "kit.toml"
    manifest.write_text(DEMO_KIT.read_text().split("[devices.outputs]")[0] + "[devices.outputs]\n" + outputs + "\n")
    r = popkit("kit", "provision", str(manifest), "--out", str(tmp_path / "out"), "--no-tls")
    assert r.returncode == 3
    assert f"{manifest}: devices[3] ('demo-lights-1').{field}" in r.stderr and why in r.stderr, r.stderr
    assert not (tmp_path / "out" / "devices").exists(), "nothing provisioned"


def test_the_provisioned_lighting_file_carries_the_manifests_fallback_look_and_floor(provisioned):
    cfg = json.loads((provisioned / "demo-lights-1.json").read_text())
    assert cfg["fallback"] == {"levels": {"r": 0, "g": 0, "b": 0, "w": 180}, "floor": {"w": 60, "dmx": {"23": [255, 255]}}}
    assert "fallback" not in json.loads((provisioned / "demo-scanner-1.json").read_text())


@pytest.mark.parametrize("fallback, field, why", [
    ("levels = { w = 256 }", "fallback.levels.w", "less than or equal to 255"),
    ("levels = { white = 10 }", "fallback.levels.white", "Extra inputs"),
    ("floor = { w = -1 }", "fallback.floor.w", "greater than or equal to 0"),
    ("floor = { dmx = { 24 = [255, 255] } }", ": fallback.floor.dmx", "slot 25 is past the controller's 24"),
    ("levels = { dmx = { 1 = [1, 2], 2 = [3] } }", "fallback.levels.dmx", "slot 2 is already set by the run from 1"),
    ("levels = { dmx = { 0 = [1] } }", "fallback.levels.dmx", "a first slot must be 1..512"),
    ("open = [[0, 1]]", "fallback.open", "Extra inputs"),
])
def test_provisioning_refuses_a_bad_fallback_naming_the_file_device_and_field(tmp_path, fallback, field, why):
    manifest = tmp_path / "kit.toml"
    manifest.write_text(DEMO_KIT.read_text().split("[devices.fallback]")[0] + "[devices.fallback]\n" + fallback + "\n")
    r = popkit("kit", "provision", str(manifest), "--out", str(tmp_path / "out"), "--no-tls")
    assert r.returncode == 3
    assert f"{manifest}: devices[3] ('demo-lights-1'){'' if field.startswith(':') else '.'}{field}" in r.stderr, r.stderr
    assert why in r.stderr, r.stderr
    assert not (tmp_path / "out" / "devices").exists(), "nothing provisioned"


# ------------------------------------------------------------------ bad input at flash time

def test_flashing_an_esp32_with_a_device_file_without_wifi_is_refused_naming_the_file(tmp_path, provisioned):
    cfg = json.loads((provisioned / "demo-scanner-1.json").read_text())
    del cfg["wifi"]
    f = tmp_path / "demo-scanner-1.json"
    f.write_text(json.dumps(cfg))
    r = popkit("device", "flash", "--role", "scanner", "--port", "/dev/ttyNOPE", "--config", str(f))
    assert r.returncode == 2 and f"{f}: wifi: missing" in r.stderr, r.stderr
    assert "mpremote" not in r.stdout, "nothing was sent to the board"
    # --wifi FILE overrides (the kit's travel router), merged into the one config file
    w = tmp_path / "router.json"
    w.write_text(json.dumps({"ssid": "router-3", "password": "x" * 12}))
    assert flashtree.load_device_file("scanner", f, "esp32", wifi=w)["wifi"] == {"ssid": "router-3", "password": "x" * 12}
    w.write_text(json.dumps({"password": "x"}))
    with pytest.raises(FirmwareError, match=f"{w}: ssid: missing"):
        flashtree.load_device_file("scanner", f, "esp32", wifi=w)


@pytest.mark.parametrize("target", ["--port", "--root"])
def test_flashing_a_lighting_file_without_outputs_is_refused_naming_the_file(tmp_path, provisioned, target):
    cfg = json.loads((provisioned / "demo-lights-1.json").read_text())
    del cfg["outputs"]
    f = tmp_path / "demo-lights-1.json"
    f.write_text(json.dumps(cfg))
    where = "/dev/ttyNOPE" if target == "--port" else str(tmp_path / "root")
    r = popkit("device", "flash", "--role", "lighting", target, where, "--config", str(f))
    assert r.returncode == 2 and f"{f}: outputs: missing" in r.stderr, r.stderr
    assert not (tmp_path / "root").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["demo-lights-1.json"]


@pytest.mark.parametrize("fallback, why", [
    ({"levels": {"w": 300}}, "fallback.levels.w: Input should be less than or equal to 255"),
    ({"levels": {"w": 10}, "floor": {"dmx": {"24": [255, 255]}}}, "fallback.floor.dmx: slot 25 is past the controller's 24"),
    ("house", "fallback: Input should be a valid dictionary"),
])
def test_flashing_a_lighting_file_with_a_bad_fallback_is_refused_naming_the_file_and_field(
        tmp_path, provisioned, fallback, why):
    cfg = json.loads((provisioned / "demo-lights-1.json").read_text())
    cfg["fallback"] = fallback
    f = tmp_path / "demo-lights-1.json"
    f.write_text(json.dumps(cfg))
    r = popkit("device", "flash", "--role", "lighting", "--root", str(tmp_path / "root"), "--config", str(f))
    assert r.returncode == 2 and f"{f}: {why}" in r.stderr, r.stderr
    assert not (tmp_path / "root").exists()


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_folder_holding_another_device_is_refused_untouched_unless_forced(tmp_path, provisioned):
    root = tmp_path / "board"
    flash = ("device", "flash", "--root", str(root), "--config")
    assert popkit(*flash, str(provisioned / "demo-scanner-1.json"), "--role", "scanner").returncode == 0
    (root / "data" / "outbox").mkdir()
    (root / "data" / "outbox" / "0001").write_bytes(b"a check-in the fleet has not had")
    before, around = snapshot(root), sorted(p.name for p in tmp_path.iterdir())

    r = popkit(*flash, str(provisioned / "demo-lights-1.json"), "--role", "lighting")
    assert r.returncode == 2
    assert f"{root}: holds scanner 'demo-scanner-1' (scanner.json)" in r.stderr and "--force" in r.stderr, r.stderr
    assert snapshot(root) == before and sorted(p.name for p in tmp_path.iterdir()) == around, "nothing half-written"

    # another scanner's file onto this scanner: its outbox is another device's, refused too
    other = json.loads((provisioned / "demo-scanner-1.json").read_text()) | {"device": "demo-scanner-2"}
    (tmp_path / "other.json").write_text(json.dumps(other))
    r = popkit(*flash, str(tmp_path / "other.json"), "--role", "scanner")
    assert r.returncode == 2 and "holds scanner 'demo-scanner-1'" in r.stderr and snapshot(root) == before

    # the same device again (a firmware update): its data carries over
    assert popkit(*flash, str(provisioned / "demo-scanner-1.json"), "--role", "scanner").returncode == 0
    assert (root / "data" / "outbox" / "0001").exists()

    r = popkit(*flash, str(provisioned / "demo-lights-1.json"), "--role", "lighting", "--force")
    assert r.returncode == 0, r.stderr
    assert not (root / "scanner.json").exists() and (root / "lighting.json").exists()
    assert list((root / "data").iterdir()) == [], "the scanner's data went with it"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(around + ["other.json"]), "no staging left behind"


def test_a_folder_that_is_not_a_flashed_tree_is_never_replaced(tmp_path, provisioned):
    root = tmp_path / "home"
    root.mkdir()
    (root / "notes.txt").write_text("mine")
    r = popkit("device", "flash", "--root", str(root), "--config", str(provisioned / "demo-scanner-1.json"),
               "--role", "scanner", "--force")
    assert r.returncode == 2 and "not a flashed tree" in r.stderr
    assert snapshot(root) == {"notes.txt": b"mine"}


def test_a_board_holding_another_role_is_refused_and_forced_its_config_and_data_go_first(tmp_path, provisioned):
    listing = "ls :\n           0 data/\n         342 lighting.json\n          16 main.py\n        1994 app_main.mpy\n"
    names = flashtree.parse_ls(listing)
    assert names == {"data", "lighting.json", "main.py", "app_main.mpy"}
    held = flashtree.resident(names, lambda role: {"device": "demo-lights-1"})
    assert held == ("lighting", "demo-lights-1")
    with pytest.raises(FirmwareError, match="/dev/ttyUSB0: holds lighting 'demo-lights-1' .*--force"):
        flashtree._refuse_other("/dev/ttyUSB0", held, "scanner", "demo-scanner-1", force=False)
    assert flashtree._refuse_other("/dev/ttyUSB0", held, "scanner", "demo-scanner-1", force=True)
    assert not flashtree._refuse_other("/dev/ttyUSB0", ("scanner", "demo-scanner-1"), "scanner", "demo-scanner-1",
                                       force=False), "the same device again"
    cfg = flashtree.load_device_file("scanner", provisioned / "demo-scanner-1.json", "esp32")
    tree = flashtree.stage("scanner", "esp32", cfg, tmp_path / "tree")
    cmds = flashtree.board_commands(tree, "/dev/ttyUSB0", flashtree.to_remove(names, held, replacing=True))
    assert [c[3:] for c in cmds[:2]] == [["fs", "rm", ":lighting.json"], ["fs", "rm", "-r", ":data"]]
    assert cmds[2][3] == "exec"
    # a board flashed by the old tool kept its Wi-Fi password in /wifi.json: it goes, the data stays
    old = flashtree.parse_ls("ls :\n          39 wifi.json\n         900 scanner.json\n           0 data/\n")
    assert flashtree.to_remove(old, ("scanner", "demo-scanner-1"), replacing=False) == ["wifi.json"]
