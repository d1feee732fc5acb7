# Safe mode (device/boot/abboot.py decides it, after too many fast reboots in a row): the network,
# MQTT and `state` saying so, and the two ways out: a rollback to the other slot (a command), or a
# field update offered on the device's update topic, downloaded and switched to as the apps do
# (link.py, fetch.py): that is how a boot-looping board is fixed in the field. Nothing of the role
# runs: no scanning, no lights; whatever looped is left alone. The smallest link there is: no
# outbox traffic beyond its state, no clock or kit topics.
import asyncio
import json

import abboot
import board
import link
import tcp


def _config():
    for role in ("scanner", "lighting"):
        try:
            with open(board.config_path(role)) as f:
                return role, json.load(f)
        except OSError:
            pass
    raise OSError("no device config")


def _fw(cfg):
    """The running slot's release, from its manifest.json (a slot an update wrote has one; a flashed
    one need not): None when unknown, and then any version offered is taken (the way out of a loop)."""
    try:
        with open(abboot.current() + "/manifest.json") as f:
            return json.load(f).get("fw")
    except (OSError, ValueError):
        return cfg.get("fw")


def _on_cmd(lk, cmd):
    if cmd.get("action") == "rollback":
        abboot.rollback("ops asked, in safe mode")
        abboot.boots(0)
        return lk.reboot(cmd, board.reset)
    return ("rejected", "safe mode: only a rollback (or an update, on the update topic)")


def main():
    role, cfg = _config()
    board.configure(cfg)
    n = abboot.boots()
    print("SAFE", role, n)
    connect, user, password = tcp.connector(cfg["broker"], board.connect_tcp)
    lk = None  # type: link.Link | None  # (the command handler's, once made)
    flash = board.flash_dir()
    lk = link.Link(cfg["kit"], cfg["device"], role, connect, board.epoch_ms, flash + "/outbox",
                   fw=_fw(cfg), on_cmd=lambda cmd: _on_cmd(lk, cmd), user=user, password=password,
                   dedup=False, outbox_buf=128, rx_buf=256,
                   updates=(board.config_path(role), board.connect_tcp, board.reset, flash, 1024))
    lk.update = {"state": "safe_mode", "why": "%d fast boots in a row" % n}
    cfg = None
    lk.start()

    async def idle():
        while True:
            board.feed()
            await asyncio.sleep_ms(1000)

    asyncio.run(idle())


main()
