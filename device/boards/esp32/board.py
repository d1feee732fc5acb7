# board.py for the ESP32: Wi-Fi, an NTP-set clock and the flash, under the names the firmware uses
# (the unix port's board.py offers the same). The firmware imports `board`, never the platform.
#
# Wi-Fi credentials come from /wifi.json on the board's flash ({"ssid": ..., "password": ...}),
# written by `popkit device flash` from the provisioning output, never from the repo.

import json
import os
import time
from errno import EINPROGRESS

import network

from tcp import open_tcp

NAME = "esp32"

# Older ESP32 builds count time from 2000-01-01; the wire contract counts from 1970.
_EPOCH_OFFSET_MS = 946684800000 if time.gmtime(0)[0] == 2000 else 0
_NTP_EVERY_MS = 3600 * 1000
_WIFI_FILE = "/wifi.json"

_wlan = None
_ntp_at = None  # ticks_ms of the last good NTP sync


def _wifi():
    """Start joining the kit's Wi-Fi if needed; True once associated with an address."""
    global _wlan
    if _wlan is None:
        _wlan = network.WLAN(network.STA_IF)
        _wlan.active(True)
    if _wlan.isconnected():
        return True
    if _wlan.status() != network.STAT_CONNECTING:
        with open(_WIFI_FILE) as f:
            creds = json.load(f)
        _wlan.connect(creds["ssid"], creds["password"])
    return False


def _sync_clock():
    """Set the RTC from NTP at most hourly; a failure keeps the RTC as it is (apps check the year)."""
    global _ntp_at
    if _ntp_at is not None and time.ticks_diff(time.ticks_ms(), _ntp_at) < _NTP_EVERY_MS:
        return
    try:
        import ntptime  # imported late: only a board with Wi-Fi up needs it

        ntptime.settime()
        _ntp_at = time.ticks_ms()
    except OSError:
        pass


def connect_tcp(host, port):
    """A non-blocking TCP socket whose connect has started; OSError while Wi-Fi is still joining,
    so the MQTT client backs off and tries again (it never blocks the scan or lighting loop)."""
    if not _wifi():
        raise OSError(EINPROGRESS)
    _sync_clock()
    return open_tcp(host, port)


def epoch_ms():
    """Milliseconds since the Unix epoch from the RTC (set by NTP; before that the apps see an old year)."""
    return time.time_ns() // 1000000 + _EPOCH_OFFSET_MS


def random_bytes(n):
    return os.urandom(n)  # the ESP32's hardware RNG


def flash_dir():
    """Where the firmware keeps its outbox, redemptions and state."""
    try:
        os.mkdir("/data")
    except OSError:
        pass  # already there
    return "/data"


def reset():
    """A hard reset, as the reset button does: the firmware starts again from main.py."""
    import machine

    machine.reset()
