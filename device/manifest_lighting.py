# Deploy manifest for the lighting controller role (micropython-lib style: freeze with
# `manifest_lighting.py` as FROZEN_MANIFEST, or cross-compile the listed modules with mpy-cross).
# Bump the version by hand on every change to a module below; it is the `fw` the device reports.
metadata(description="PopKit lighting controller (ESP32: RGBW PWM + DMX512)", version="0.4.1")

# shared libraries (device/lib)
module("log.py", base_path="lib")
module("clock.py", base_path="lib")
module("atomic.py", base_path="lib")
module("commands.py", base_path="lib")
module("scene.py", base_path="lib")
module("dmx.py", base_path="lib")
module("jscan.py", base_path="lib")
module("timeline.py", base_path="lib")
module("lighting.py", base_path="lib")
module("flashlog.py", base_path="lib")
module("pkmqtt.py", base_path="lib")
module("link.py", base_path="lib")
module("tcp.py", base_path="lib")
module("hmac256.py", base_path="lib")  # update.py checks a release's tag with it
module("update.py", base_path="lib")  # staging a release in the spare A/B slot (imported only then)
module("admit.py", base_path="lib")  # update.py's checks of a release (imported only to open the slot)
module("fetch.py", base_path="lib")  # downloading a release from the kit's agent (the update mode's)
module("upmode.py", base_path="lib")  # the update mode: the download after a reset, the lights held

# board layer (the unix build uses boards/unix instead)
module("board.py", base_path="boards/esp32")
module("lighting_hw.py", base_path="boards/esp32")

# the role's app
module("main.py", base_path="apps/lighting")
