"""A/B slots, trial, rollback and boot-loop safe mode (device/boot/, device/lib/update.py, safemode.py).

The flash tree is the one `popkit device flash` writes (popkit/flashtree.py: main.py the boot stage,
abboot.mpy and safemode.mpy beside it, the app in slot a); it boots as a board does, `cd TREE &&
micropython main.py`, in the real unix port. The apps in the slots are small stand-ins (they print
their version and call the boot stage's settle() as the role apps do), so that each boot takes a
fraction of a second; the slots hold the real compiled update.py and hmac256.py, and safe mode runs
the real link against a real Mosquitto. A release comes as kits/release.py makes it, its tag
HMAC'ed with this device's update_key as the agent adds it; tests/device/scripts/ab_stage.py feeds
it to update.py in chunks, as the download will.

What a crew would see: a release lands in the spare slot, boots on trial and commits once healthy; a
release that fails its trial, or any refused one, leaves the door running what it ran; a power cut
(SIGKILL) at any step leaves a board that boots an app that works; a board in a boot loop comes up
in safe mode, online, and an update gets it out.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from kits import release
from kits.contract import decode
from popkit import flashtree
from tests.conftest import wait_until
from tests.device.firmware import SCRIPTS, Device, mpy_cross
from tests.device.mpy import DEVICE, micropython_binary

RUNNING = "0.3.1"
KEY = bytes(range(32))  # this device's update_key (provisioned; hex in scanner.json)
HEAP = "128k"  # the slots' .mpy load into the heap here (no ROMFS), code included
LINK_LIBS = ("atomic", "clock", "flashlog", "link", "log", "pkmqtt", "tcp")  # what safe mode imports
UPDATE_LIBS = ("admit", "hmac256", "update")
# What staging may hold live, its code aside (printed: loaded into the heap from a slot, in flash from
# a ROMFS or frozen build). The scanner runs ~47.8 KB of the 49,152 B limit: the delivery's download
# (next) has to keep the sum there, so this is watched from the start.
STAGING_HEAP = 4 * 1024


def app_source(version: str, body: str = "", healthy: str = "True") -> str:
    """A stand-in role app: says its version, then does what a role app does with the boot stage."""
    return (f"import asyncio\nimport abboot\nprint('APP', '{version}')\n{body}\n"
            "async def go():\n"
            f"    r = await abboot.settle(lambda: {healthy}, 1, 0)\n"
            "    print('SETTLED', r)\n"
            "    while True:\n"
            "        await asyncio.sleep_ms(100)\n"
            "asyncio.run(go())\n")


@pytest.fixture(scope="module")
def mpy(tmp_path_factory) -> Path:
    """The device modules a tree needs, compiled for the unix port."""
    out = tmp_path_factory.mktemp("ab-mpy")
    for src in [DEVICE / "boot" / "abboot.py", DEVICE / "lib" / "safemode.py",
                DEVICE / "boards" / "unix" / "board.py"] + [DEVICE / "lib" / f"{m}.py" for m in LINK_LIBS + UPDATE_LIBS]:
        subprocess.run([mpy_cross(), "-o", str(out / f"{src.stem}.mpy"), str(src)], check=True, timeout=30)
    return out


@pytest.fixture(scope="module")
def abi() -> int:
    r = subprocess.run([micropython_binary(), "-c", "import sys; print(sys.implementation._mpy)"],
                       capture_output=True, text=True, timeout=10)
    return int(r.stdout)


def compiled(tmp: Path, source: str) -> bytes:
    src = tmp / f"app-{hashlib.sha256(source.encode()).hexdigest()[:8]}.py"
    src.write_text(source)
    subprocess.run([mpy_cross(), "-o", str(src.with_suffix(".mpy")), str(src)], check=True, timeout=30)
    return src.with_suffix(".mpy").read_bytes()


def slot_files(mpy: Path, app: bytes, safe: bool = False) -> dict[str, bytes]:
    files = {"app_main.mpy": app}
    for m in UPDATE_LIBS + ((*LINK_LIBS, "board") if safe else ()):
        files[f"{m}.mpy"] = (mpy / f"{m}.mpy").read_bytes()
    return files


def make_tree(tmp_path: Path, mpy: Path, app: str, broker_port: int = 1, safe_boots: int = 5) -> Path:
    """The tree `popkit device flash` writes (its layout and boot stage), with a stand-in app in slot a."""
    tree = tmp_path / "tree"
    (tree / "a").mkdir(parents=True)
    (tree / "data").mkdir()
    (tree / "main.py").write_text(flashtree.BOOT.read_text().replace("ROLE_SAFE_BOOTS", str(safe_boots)))
    for m in ("abboot", "safemode"):
        shutil.copyfile(mpy / f"{m}.mpy", tree / f"{m}.mpy")
    (tree / "slot").write_text("a")
    for name, data in slot_files(mpy, compiled(tmp_path, app), safe=True).items():
        (tree / "a" / name).write_bytes(data)
    cfg = {"kit": "demo", "device": "ab-door-1", "update_key": KEY.hex(),
           "broker": {"host": "127.0.0.1", "port": broker_port, "keepalive": 5, "backoff_ms": 200}}
    (tree / "scanner.json").write_text(json.dumps(cfg))
    return tree


def bundle(tmp_path: Path, mpy: Path, abi: int, version: str, app: str, tweak=None, key: bytes = KEY,
           corrupt: str | None = None) -> Path:
    """A release of the stand-in ``app`` as kits/release.py lays it out, with this device's tag.
    ``tweak(manifest dict)`` changes fields before it is tagged (a wrong role, ABI, size);
    ``corrupt``: a file whose bytes then differ from the manifest's hash."""
    pem = release.new_private_key()
    files = slot_files(mpy, compiled(tmp_path, app))
    folder = release.write_bundle(tmp_path / f"bundles-{os.urandom(3).hex()}", "scanner", version, abi, files, pem, 1)
    mj = (folder / release.MANIFEST).read_bytes()
    if tweak is not None:
        m = json.loads(mj)
        tweak(m)
        mj = json.dumps(m, sort_keys=True, separators=(",", ":")).encode()
        (folder / release.MANIFEST).write_bytes(mj)
    if corrupt:
        p = folder / release.FILES / corrupt
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 0xFF
        p.write_bytes(bytes(data))
    (folder / "tag").write_text(release.device_tag(key, mj).hex())
    return folder


def boot(tree: Path) -> Device:
    return Device.from_tree(tree, HEAP)


def stage(tree: Path, folder: Path, *args: str, running: str = RUNNING) -> Device:
    """tests/device/scripts/ab_stage.py in the tree: the release into the spare slot, then the switch."""
    dev = Device.__new__(Device)
    dev.script, dev.args = "ab_stage.py", [str(folder), f"scanner-{running}", *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROPY")}
    dev._spawn(["-X", "heapsize=64k", str(SCRIPTS / "ab_stage.py"), *dev.args], env, tree)
    return dev


def staged(tree: Path, folder: Path, *args: str, running: str = RUNNING) -> str:
    """Run the stage to its end; its last line (SWITCHED <slot> or REFUSED <why>)."""
    dev = stage(tree, folder, *args, running=running)
    assert dev.wait(30) == 0, "\n".join(dev.lines)
    return dev.lines[-1]


def runs(tree: Path, version: str, slot: str, mode: str = "normal", settled: str = "None") -> Device:
    """Boot the tree; it must run ``version`` from ``slot`` and settle as ``settled``. Left running."""
    dev = boot(tree)
    dev.expect(rf"ABBOOT {slot} {mode} \d+")
    dev.expect(rf"APP {version}$")
    dev.expect(rf"SETTLED {settled}", timeout=15)
    return dev


def slot_state(tree: Path) -> dict:
    """The pointer, the trial marker and slot a's bytes: what a refusal must not touch."""
    return {"slot": (tree / "slot").read_text(), "trial": (tree / "trial").exists(),
            "a": {p.name: p.read_bytes() for p in sorted((tree / "a").iterdir())}}


# ------------------------------------------------------------------ stage, switch, trial, commit

def test_a_release_is_staged_tried_and_committed_and_the_old_slot_kept(tmp_path, mpy, abi):
    tree = make_tree(tmp_path, mpy, app_source(RUNNING))
    before = slot_state(tree)
    folder = bundle(tmp_path, mpy, abi, "0.3.2", app_source("0.3.2"))
    dev = stage(tree, folder)
    assert dev.wait(30) == 0 and dev.lines[-1] == "SWITCHED b", dev.lines
    code, held = int(dev.expect(r"CODE (\d+)").group(1)), int(dev.expect(r"HEAP (\d+)").group(1))
    print(f"\nstaging a release: {code} B of code (update.py, hmac256.py, loaded from the slot), "
          f"{held} B live beside it between chunks (manifest and tag, hash context, buffers)")
    assert held < STAGING_HEAP, "the staging must fit beside a running app (issue 18: 48 KB with a door scanning)"
    assert (tree / "slot").read_text() == "b" and (tree / "trial").read_text() == "b 0"
    assert (tree / "b" / "manifest.json").read_bytes() == (folder / release.MANIFEST).read_bytes()
    for e in json.loads((folder / release.MANIFEST).read_bytes())["files"]:
        assert hashlib.sha256((tree / "b" / e["path"]).read_bytes()).hexdigest() == e["sha256"]

    dev = runs(tree, "0.3.2", "b", "trial", r"\('committed', 'b'\)")
    assert not (tree / "trial").exists(), "committed: the trial marker is gone"
    dev.kill()
    runs(tree, "0.3.2", "b").kill()  # committed: it boots as the good slot now
    assert {p.name: p.read_bytes() for p in sorted((tree / "a").iterdir())} == before["a"], "the last good slot, kept"


def _role(m):
    m["role"] = "lighting"


def _abi(m):
    m["mpy_abi"] += 1


def _huge(m):
    m["total_size"] = 1 << 50


REFUSALS = {
    "bad tag": (dict(key=bytes(32)), (), r"bad tag"),
    "wrong role": (dict(tweak=_role), (), r"wrong role: lighting, this device is a scanner"),
    "mpy ABI": (dict(tweak=_abi), (), r"mpy ABI \d+, this firmware runs \d+"),
    "too big": (dict(tweak=_huge), (), r"too big: \d+ bytes, \d+ free on flash"),
    "older": (dict(version="0.3.0"), (), r"version 0.3.0 is not newer than the running scanner-0.3.1"),
    "same": (dict(version=RUNNING), (), r"version 0.3.1 is not newer"),
    "hash mismatch": (dict(corrupt="app_main.mpy"), (), r"hash mismatch: app_main.mpy"),
    "repeated chunk": ({}, ("-", "repeat"), r"chunk of \S+ at 256, the file holds 512: repeated chunk"),
    "missing chunk": ({}, ("-", "gap"), r"chunk of \S+ at 512, the file holds 256: missing a chunk"),
    "truncated file": ({}, ("-", "short"), r"\S+: \d+ of \d+ bytes"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_refused_release_leaves_the_running_slot_untouched_and_says_why(case, tmp_path, mpy, abi):
    tree = make_tree(tmp_path, mpy, app_source(RUNNING))
    before = slot_state(tree)
    kw, args, why = REFUSALS[case]
    kw = dict(kw)
    version = kw.pop("version", "0.3.2")
    # the stand-in app is padded so a chunked file spans several 256-byte chunks
    folder = bundle(tmp_path, mpy, abi, version, app_source(version, "PAD = '" + "x" * 900 + "'"), **kw)
    last = staged(tree, folder, *args)
    assert last.startswith("REFUSED "), last
    assert re.search(why, last), last
    assert slot_state(tree) == before
    runs(tree, RUNNING, "a").kill()


def test_an_older_release_is_taken_when_ops_ask_for_a_rollback(tmp_path, mpy, abi):
    tree = make_tree(tmp_path, mpy, app_source(RUNNING))
    folder = bundle(tmp_path, mpy, abi, "0.3.0", app_source("0.3.0"))
    assert staged(tree, folder, "-", "normal", "rollback") == "SWITCHED b"
    runs(tree, "0.3.0", "b", "trial", r"\('committed', 'b'\)").kill()


# ------------------------------------------------------------------ trials that fail

def test_a_trial_that_raises_at_import_rolls_back_and_says_why(tmp_path, mpy, abi):
    tree = make_tree(tmp_path, mpy, app_source(RUNNING))
    folder = bundle(tmp_path, mpy, abi, "0.3.2", app_source("0.3.2", "raise RuntimeError('broken release')"))
    assert staged(tree, folder) == "SWITCHED b"
    dev = boot(tree)
    dev.expect(r"ABBOOT b trial 1")
    dev.expect(r"ABBOOT failed app raised RuntimeError\('broken release',\)")
    assert dev.wait(10) == 75, "the board resets (the unix board's reset exit)"
    dev = runs(tree, RUNNING, "a", settled=r"\('rolled_back', \"rolled_back b: app raised RuntimeError\('broken release',\)\"\)")
    assert not (tree / "trial").exists() and (tree / "slot").read_text() == "a"
    dev.kill()
    runs(tree, RUNNING, "a").kill()  # the reason was reported once


def test_a_trial_that_never_gets_healthy_rolls_back_on_the_next_boot(tmp_path, mpy, abi):
    tree = make_tree(tmp_path, mpy, app_source(RUNNING))
    folder = bundle(tmp_path, mpy, abi, "0.3.2", app_source("0.3.2", healthy="False"))
    assert staged(tree, folder) == "SWITCHED b"
    dev = boot(tree)
    dev.expect(r"ABBOOT b trial 1")
    dev.expect(r"APP 0.3.2$")
    dev.expect(r"ABBOOT trial never healthy", timeout=10)  # 5 x its trial_s (1 s here)
    assert dev.wait(10) == 75, "it resets itself: a trial that never gets healthy is not kept waiting for"
    assert not dev.matching("SETTLED"), "never healthy: never committed"
    runs(tree, RUNNING, "a", settled=r"\('rolled_back', 'rolled_back b: never healthy in 6 s'\)").kill()


# ------------------------------------------------------------------ power cuts

def test_a_power_cut_at_every_step_leaves_a_board_that_boots_an_app_that_works(tmp_path, mpy, abi):
    tree = make_tree(tmp_path, mpy, app_source(RUNNING))
    folder = bundle(tmp_path, mpy, abi, "0.3.2", app_source("0.3.2", "PAD = '" + "x" * 900 + "'"))
    for step in ("opened", "midchunk", "files", "midswitch"):
        dev = stage(tree, folder, step)
        dev.expect(rf"STEP {step}$")
        dev.kill()
        runs(tree, RUNNING, "a").kill()  # the switch never happened: the old app, as before
        assert (tree / "slot").read_text() == "a" and not (tree / "trial").exists(), step
    # the download resumes where the cuts left it: every file that arrived whole is not asked again
    dev = stage(tree, folder)
    assert dev.wait(30) == 0 and dev.lines[-1] == "SWITCHED b", dev.lines
    assert {m.group(1) for m in dev.matching(r"RESUME (\S+) 0$")} < {e["path"] for e in json.loads(
        (folder / release.MANIFEST).read_bytes())["files"]}, "some files were already there"

    # cut in the trial, before the commit: the next boot goes back to the last good slot
    dev = boot(tree)
    dev.expect(r"ABBOOT b trial 1")
    dev.expect(r"APP 0.3.2$")
    dev.kill()
    runs(tree, RUNNING, "a", settled=r"\('rolled_back', 'rolled_back b: reset before the healthy window'\)").kill()

    # the same release again: the spare slot already holds it whole (nothing downloaded twice)
    dev = stage(tree, folder)
    assert dev.wait(30) == 0 and dev.lines[-1] == "SWITCHED b", dev.lines
    assert not dev.matching(r"RESUME \S+ 0$")
    # the commit is one removal (atomic): cut just after it, the new app is the good one
    dev = runs(tree, "0.3.2", "b", "trial", r"\('committed', 'b'\)")
    dev.kill()
    runs(tree, "0.3.2", "b").kill()


# ------------------------------------------------------------------ boot loop, safe mode

def test_a_boot_loop_comes_up_in_safe_mode_online_and_an_update_fixes_it(tmp_path, mpy, abi, broker, collect):
    looping = app_source(RUNNING, "import sys\nsys.exit(75)")  # dies at once, every boot
    tree = make_tree(tmp_path, mpy, looping, broker_port=broker.port, safe_boots=3)
    seen = collect("popkit/v1/demo/ab-door-1/state")
    for n in (1, 2, 3):
        dev = boot(tree)
        dev.expect(rf"ABBOOT a normal {n}$")
        assert dev.wait(10) == 75
    dev = boot(tree)
    dev.expect(r"ABBOOT a safe 4$")
    dev.expect(r"SAFE scanner 4$")
    wait_until(lambda: any(json.loads(p).get("online") for p in seen.on("/state")), 15, what="safe mode online")
    # It says so in its state, in the contract's terms (the fleet reads it: kits/contract.py UpdateReport).
    born = [decode("state", p) for p in seen.on("/state") if json.loads(p).get("online")]
    assert born[-1].update is not None and born[-1].update.state == "safe_mode", born[-1]
    assert born[-1].update.why == "4 fast boots in a row"
    assert not dev.matching(r"APP "), "safe mode runs nothing of the role"
    dev.kill()

    folder = bundle(tmp_path, mpy, abi, "0.3.2", app_source("0.3.2"))
    assert staged(tree, folder) == "SWITCHED b"
    runs(tree, "0.3.2", "b", "trial", r"\('committed', 'b'\)").kill()
    assert (tree / "boots").read_text() == "0"
    runs(tree, "0.3.2", "b").kill()


def test_the_flash_tree_boots_its_app_through_the_boot_stage(tmp_path):
    """The real scanner, as `popkit device flash` stages it: slot a, through main.py."""
    cfg = {"kit": "demo", "device": "d1", "broker": {"host": "127.0.0.1", "port": 1}, "gate": {"events": []}}
    tree = flashtree.stage("scanner", "unix", cfg, tmp_path / "tree")
    dev = boot(tree)
    dev.expect(r"ABBOOT a normal 1$")
    dev.expect(r"READY", timeout=20)
    dev.kill()


def test_the_esp32_firmware_image_path_compiles_for_the_esp32(tmp_path):
    """device/boards/esp32/fwimage.py (esp32.Partition OTA) cannot run here: it compiles for the ESP32's
    xtensawin, and tests/device/test_firmware_types.py type-checks it against the ESP32 stubs."""
    for src in (DEVICE / "boards" / "esp32" / "fwimage.py", DEVICE / "boot" / "abboot.py"):
        r = subprocess.run([mpy_cross(), "-march=xtensawin", "-o", str(tmp_path / f"{src.stem}.mpy"), str(src)],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
    text = (DEVICE / "boards" / "esp32" / "fwimage.py").read_text()
    for call in ("get_next_update()", "set_boot()", "writeblocks("):
        assert call in text
    assert "mark_app_valid_cancel_rollback()" in (DEVICE / "boot" / "abboot.py").read_text()
