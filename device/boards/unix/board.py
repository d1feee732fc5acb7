# board.py for the unix port: what the firmware asks of a board, on a PC.
#
# The ESP32 board offers the same names over Wi-Fi, its RTC and its flash;
# the firmware imports `board` and never the platform directly.

import os
import time

from micropython import const

from tcp import open_tcp

NAME = "unix"
RESET_EXIT = 75  # plumbing.exits.RESTART_EXIT (EX_TEMPFAIL): supervisors (popkit demo, systemd) start it again


def connect_tcp(host, port):
    """A non-blocking TCP socket whose connect has started (pkmqtt waits for it to finish)."""
    return open_tcp(host, port)


# The board's clock: the host's, moved by an offset. It starts where hw.epoch_ms in the config
# (configure) or $POPKIT_BOARD_EPOCH_MS says, and runs on from there, so a test can power a device
# up in the year 2000 as an ESP32 with no RTC backup is; then the kit's time sets it (clock.py).
# One list, not four globals: each module global costs an ESP32-sized heap a dict slot and a name.
_st = [0, 8000, None, None]  # clock offset ms, watchdog ms, fed at, reset marker path
_OFS = const(0)
_WDT = const(1)
_FED = const(2)
_DIR = const(3)
# Where the clock's time came from: "synced" (the host's clock, NTP-kept, or a synced kit), "kit"
# (a start time given to the board, or the kit's unsynced time). clock.py calls any time before its
# build floor unset, whatever this says.
clock_source = "synced"
bitten = False  # the watchdog has reset the board: the app's KeyboardInterrupt is its doing


def epoch_ms():
    """Milliseconds since the Unix epoch on the board's clock (the ESP32 board reads its RTC)."""
    return time.time_ns() // 1000000 + _st[_OFS]


def set_epoch_ms(ms, source):
    """Set the board's clock to ``ms`` now; ``source`` is where that time came from ("synced", "kit")."""
    global clock_source
    _st[_OFS] = int(ms) - time.time_ns() // 1000000
    clock_source = source


if os.getenv("POPKIT_BOARD_EPOCH_MS"):
    set_epoch_ms(os.getenv("POPKIT_BOARD_EPOCH_MS"), "kit")


def random_bytes(n):
    return os.urandom(n)


def reset():
    """A process cannot reset its board; it ends with the code its supervisor restarts it on (the
    next boot's reset_cause says "soft", as an ESP32's after machine.reset())."""
    import sys

    if not bitten:  # a watchdog reset has left its own marker
        _mark("soft")
    sys.exit(RESET_EXIT)


# ---------------------------------------------------------------- watchdog and reset cause
# A stand-in for machine.WDT: a thread that wakes every 100 ms and, when the main loop has not fed
# it for hw.wdt_ms (8 s), ends the process the way a reset would: a marker in the data folder (the next
# boot's reset_cause says "watchdog"), then SIGINT to itself, so the main thread (hung in Python or
# waiting in poll) raises KeyboardInterrupt, and the app, seeing `bitten`, calls reset(): exit
# RESET_EXIT, on which its supervisor starts it again as a board restarts. One hung in C beyond
# the interrupt's reach is killed 2 s later (SIGKILL, as a power cut): its marker is on disk.
# The shell sends the SIGINT from the background: system() ignores SIGINT in its caller until it
# returns.


def reset_cause(data_dir):
    """Why this boot happened: the marker a watchdog or reset() left in ``data_dir`` (read and
    removed), else "power" (the process was started, as a board is powered up)."""
    _st[_DIR] = data_dir + "/reset_cause"
    try:
        with open(_st[_DIR]) as f:
            cause = f.read().strip()
        os.remove(_st[_DIR])
    except OSError:
        return "power"
    return cause if cause in ("watchdog", "soft", "reset", "other") else "other"


def _mark(cause):
    """The reset marker: the unix board's stand-in for the chip's reset-reason register."""
    if _st[_DIR] is not None:
        try:
            with open(_st[_DIR], "w") as f:
                f.write(cause)
        except OSError:
            pass


def feed():
    """From the main loop, every pass. The first call starts the watchdog: from then on a loop that
    does not come back here within hw.wdt_ms (8 s) resets the board."""
    first = _st[_FED] is None
    _st[_FED] = time.ticks_ms()
    if first:
        import _thread

        _thread.start_new_thread(_watch, ())


def _watch():
    global bitten
    while time.ticks_diff(time.ticks_ms(), _st[_FED]) < _st[_WDT]:
        time.sleep_ms(100)
    bitten = True
    _mark("watchdog")
    print("WATCHDOG the main loop was not fed for %d ms: reset" % _st[_WDT])
    os.system("(sleep 0.05; kill -INT $PPID) &")
    time.sleep_ms(2000)
    os.system("kill -KILL $PPID")


def config_path(role):
    """The device's config in the flashed tree (`popkit device flash --root DIR`): <role>.json in the
    working folder, as the firmware is booted there (cd DIR && micropython main.py)."""
    return role + ".json"


def configure(cfg):
    """Take what the board needs from the device's config, once, right after the app loads it.
    The unix port joins no Wi-Fi: the config's "wifi" is the ESP32 board's. "hw": {"epoch_ms": the
    clock's start (over $POPKIT_BOARD_EPOCH_MS), "wdt_ms": the watchdog's timeout (default 8000)}."""
    hw = cfg.get("hw") or {}
    if hw.get("epoch_ms") is not None:
        set_epoch_ms(hw["epoch_ms"], "kit")
    _st[_WDT] = hw.get("wdt_ms") or _st[_WDT]


def flash_dir():
    """Where the firmware keeps its files: $POPKIT_FLASH, else ./data (the flashed tree's /data)."""
    d = os.getenv("POPKIT_FLASH") or "data"
    try:
        os.mkdir(d)
    except OSError:
        pass  # already there
    return d
