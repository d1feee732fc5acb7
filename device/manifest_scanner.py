# Deploy manifest for the scanner role (ESP32 + GM65/GM861 QR module).
#
# A MicroPython manifest (build: make BOARD=ESP32_GENERIC FROZEN_MANIFEST=.../manifest_scanner.py):
# the shared libs and the ESP32 board layer are frozen into the firmware image (they take no
# heap as frozen bytecode; pkmqtt alone does not compile inside a 64 KB heap), the app is
# frozen as `main`. The unix-port tests cross-compile the same list (tests/device/test_scanner_app.py
# checks the list against the files and VERSION against the app's FW).
#
# Needs on the board's flash: scanner.json (kit, device, broker, gate: event keys) and wifi.json
# (ssid, password) for boards/esp32/board.py (Wi-Fi, NTP-set RTC, flash folder).

VERSION = "scanner-0.3.1"

LIBS = ("admit", "atomic", "clock", "fetch", "flashlog", "hmac256", "link", "log", "pkmqtt", "redemptions", "scanline",
        "tcp", "ticket", "till", "update", "verdict")
BOARD = ("board", "scanner_hw")  # from device/boards/<port>/
APP = "apps/scanner/main.py"

try:
    metadata(version=VERSION, description="PopKit door scanner")  # noqa: F821 - manifest builtins
    include("$(PORT_DIR)/boards/manifest.py")  # noqa: F821 - the port's own frozen modules (asyncio)
    for _m in LIBS:
        module(_m + ".py", base_path="$(MPY_DIR)/../device/lib")  # noqa: F821
    for _m in BOARD:
        module(_m + ".py", base_path="$(MPY_DIR)/../device/boards/esp32")  # noqa: F821
    module("main.py", base_path="$(MPY_DIR)/../device/apps/scanner")  # noqa: F821
except NameError:  # imported as plain Python (tests, tools): the lists above are the manifest
    pass
