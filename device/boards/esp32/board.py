# board.py for the ESP32: Wi-Fi, the RTC (internet NTP when there is any, else the kit's time), the
# watchdog and the flash, under the names the firmware uses
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
_ntp_at = None  # ticks_ms of the last NTP request
# Internet NTP by address, never by name: a DNS lookup blocks the whole loop, and where the kit's
# network has no uplink its resolver may take longer to fail than the watchdog waits (8 s).
# time.cloudflare.com's anycast address; the config's "ntp" names another, or null for none.
_ntp_addr = [("162.159.200.123", 123)]  # type: list
_ntp_sock = None  # a request out, its answer not read yet
# Where the RTC's time came from: "kit" until told otherwise (an RTC that reads a year before the
# build floor is unset whatever this says: clock.py), "synced" after internet NTP.
clock_source = "kit"
_wdt = None


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
    if "ntp" in cfg:  # an NTP server's IP address, or null: no internet time asked for
        _ntp_addr[0] = (cfg["ntp"], 123) if cfg["ntp"] else None
    w = cfg.get("wifi")
    if not w or not w.get("ssid"):
        _creds = None
        print("WIFI none: no wifi.ssid in the config (popkit kit provision --wifi)")
        return
    _creds = (w["ssid"], w.get("password", ""))


def _sync_clock():
    """Ask internet NTP for the time at most hourly, until the clock is synced: the request goes out
    on a non-blocking UDP socket and feed() reads the answer, so the loop never waits for it. A kit
    without internet never answers: the kit's time message (clock.py) sets the clock instead."""
    global _ntp_at, _ntp_sock
    if clock_source == "synced" or _ntp_sock is not None or _ntp_addr[0] is None:
        return
    at = _ntp_at
    if at is not None and time.ticks_diff(time.ticks_ms(), at) < _NTP_EVERY_MS:
        return
    _ntp_at = time.ticks_ms()
    try:
        import socket

        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        q = bytearray(48)
        q[0] = 0x1B  # SNTP v3, client
        s.sendto(q, _ntp_addr[0])
        _ntp_sock = s
    except OSError:
        pass  # no route: the kit's time it is


def _ntp_answer(s):
    """The NTP answer on ``s``, if it came (called from feed(), so every loop pass); gives up after 3 s."""
    global _ntp_sock
    try:
        msg = s.recv(48)
    except OSError:  # EAGAIN: not yet
        at = _ntp_at
        if at is None or time.ticks_diff(time.ticks_ms(), at) > 3000:
            s.close()
            _ntp_sock = None
        return
    s.close()
    _ntp_sock = None
    if len(msg) < 48:
        return
    import struct

    secs, frac = struct.unpack("!II", msg[40:48])
    if secs:
        set_epoch_ms((secs - 2208988800) * 1000 + (frac >> 22) * 1000 // 1024, "synced")  # NTP counts from 1900


def connect_tcp(host, port):
    """A non-blocking TCP socket whose connect has started; OSError while Wi-Fi is still joining,
    so the MQTT client backs off and tries again (it never blocks the scan or lighting loop)."""
    if not _wifi():
        raise OSError(EINPROGRESS)
    _sync_clock()
    return open_tcp(host, port)


def epoch_ms():
    """Milliseconds since the Unix epoch from the RTC (set by NTP or the kit's time; before that the
    apps see an old year: clock.py calls it unset)."""
    return time.time_ns() // 1000000 + _EPOCH_OFFSET_MS


def set_epoch_ms(ms, source):
    """Set the RTC to ``ms`` (Unix epoch) now; ``source``: where the time came from ("synced", "kit")."""
    global clock_source
    import machine

    t = time.gmtime((ms - _EPOCH_OFFSET_MS) // 1000)
    # RTC.datetime: (year, month, day, weekday, hours, minutes, seconds, microseconds)
    machine.RTC().datetime((t[0], t[1], t[2], t[6], t[3], t[4], t[5], (ms % 1000) * 1000))
    clock_source = source


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


# ---------------------------------------------------------------- watchdog and reset cause

def reset_cause(data_dir):
    """Why this boot happened, as the chip says (machine.reset_cause); ``data_dir`` is the unix
    board's, where its stand-in leaves a marker."""
    import machine

    c = machine.reset_cause()
    for code, name in ((machine.PWRON_RESET, "power"), (machine.WDT_RESET, "watchdog"),
                       (machine.SOFT_RESET, "soft"), (machine.HARD_RESET, "reset")):
        if c == code:
            return name
    return "other"


def feed():
    """From the main loop, every pass: the watchdog's food, and an NTP answer read if one is due.
    The first call starts the hardware watchdog: from then on a loop that does not come back here
    within 8 s resets the chip (reset_cause "watchdog" at the next boot). It cannot be stopped."""
    global _wdt
    if _wdt is None:
        import machine

        _wdt = machine.WDT(timeout=8000)
    _wdt.feed()
    if _ntp_sock is not None:
        _ntp_answer(_ntp_sock)

