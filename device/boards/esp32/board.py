# board.py for the ESP32: Wi-Fi, an NTP-set clock and the flash, under the names the firmware uses
# (the unix port's board.py offers the same). The firmware imports `board`, never the platform.
#
# The flashed tree (`popkit device flash`): /main.py, the role's modules, /<role>.json (the device's
# whole config: kit, device, broker, wifi, ...) and /data (what the firmware writes). The app reads
# config_path(role) and hands the config to configure(), which keeps the kit Wi-Fi's credentials
# ({"wifi": {"ssid", "password"}}, put there by `popkit kit provision --wifi`, never from the repo).

import os
import time
from errno import EINPROGRESS

import network

from tcp import open_tcp

NAME = "esp32"

# Older ESP32 builds count time from 2000-01-01; the wire contract counts from 1970.
_EPOCH_OFFSET_MS = 946684800000 if time.gmtime(0)[0] == 2000 else 0
_NTP_EVERY_MS = 3600 * 1000
_DATA = "/data"

_wlan = None
_creds = None  # (ssid, password) from the config, set by configure()
_ntp_at = None  # ticks_ms of the last good NTP sync


def _wifi():
    """Start joining the kit's Wi-Fi if needed; True once associated with an address."""
    global _wlan
    if _wlan is None:
        _wlan = network.WLAN(network.STA_IF)
        _wlan.active(True)
    if _wlan.isconnected():
        return True
    if _creds is None:
        return False  # no Wi-Fi in the config (configure() said so at boot): no link, the app runs on
    if _wlan.status() != network.STAT_CONNECTING:
        _wlan.connect(_creds[0], _creds[1])
    return False


def config_path(role):
    """The device's config in the flashed tree: /<role>.json at the root of the flash."""
    return "/" + role + ".json"


def configure(cfg):
    """Take what the board needs from the device's config, once, right after the app loads it:
    the kit Wi-Fi's credentials ("wifi": {"ssid", "password"})."""
    global _creds
    w = cfg.get("wifi")
    if not w or not w.get("ssid"):
        _creds = None
        print("WIFI none: no wifi.ssid in the config (popkit kit provision --wifi)")
        return
    _creds = (w["ssid"], w.get("password", ""))


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
        os.mkdir(_DATA)
    except OSError:
        pass  # already there
    return _DATA


def reset():
    """A hard reset, as the reset button does: the firmware starts again from main.py."""
    import machine

    machine.reset()
