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


def flash_dir():
    """Where the firmware keeps its files: $POPKIT_FLASH, else ./flash."""
    return os.getenv("POPKIT_FLASH") or "flash"
