# board.py for the unix port: what the firmware asks of a board, on a PC.
#
# The ESP32 board offers the same names over Wi-Fi, its RTC and its flash;
# the firmware imports `board` and never the platform directly.

import os
import time

from tcp import open_tcp

NAME = "unix"
RESET_EXIT = 75  # popkit.RESTART_EXIT (EX_TEMPFAIL): supervisors (popkit demo, systemd) start it again


def connect_tcp(host, port):
    """A non-blocking TCP socket whose connect has started (pkmqtt waits for it to finish)."""
    return open_tcp(host, port)


def epoch_ms():
    """Milliseconds since the Unix epoch (the ESP32 board reads its NTP-set RTC)."""
    return time.time_ns() // 1000000


def random_bytes(n):
    return os.urandom(n)


def reset():
    """A process cannot reset its board; it ends with the code its supervisor restarts it on."""
    import sys

    sys.exit(RESET_EXIT)


def config_path(role):
    """The device's config in the flashed tree (`popkit device flash --root DIR`): <role>.json in the
    working folder, as the firmware is booted there (cd DIR && micropython main.py)."""
    return role + ".json"


def configure(cfg):
    """Take what the board needs from the device's config, once, right after the app loads it.
    The unix port joins no Wi-Fi: the config's "wifi" is the ESP32 board's."""


def flash_dir():
    """Where the firmware keeps its files: $POPKIT_FLASH, else ./data (the flashed tree's /data)."""
    d = os.getenv("POPKIT_FLASH") or "data"
    try:
        os.mkdir(d)
    except OSError:
        pass  # already there
    return d
