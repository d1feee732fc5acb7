# A stand-in for the ESP32 port's `network` module, for the board layer's tests under the unix port:
# a station interface that records what it was asked to join (joined) and never gets an address.
STA_IF = 0
STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010

joined = []  # (ssid, password), one per connect()


class WLAN:
    def __init__(self, interface):
        self._on = False
        self._status = STAT_IDLE

    def active(self, on=None):
        if on is not None:
            self._on = on
        return self._on

    def isconnected(self):
        return self._status == STAT_GOT_IP

    def status(self, *_):
        return self._status

    def connect(self, ssid, password):
        joined.append((ssid, password))
        self._status = STAT_CONNECTING
