# lighting_hw.py for the ESP32: four LEDC PWM channels (MOSFET-driven RGBW strip) and
# DMX512 out on a hardware UART through an RS-485 transceiver (transmit only: DE held high).
#
# The role's config (/lighting.json, provisioned from the kit manifest's `outputs`) names the pins:
#   "outputs": {"pwm": {"pins": [r, g, b, w], "freq": 1000},    null where a channel is not fitted
#               "dmx": {"uart": 1, "tx": 17, "de": 4}},          de: null when DE is wired high
#   "dmx_slots": 24, "gamma": 2.2
# Either of pwm and dmx may be absent: no such output. `popkit device flash` refuses a lighting
# file with neither, so a flashed controller always drives something.
from machine import PWM, Pin

import dmx
from scene import Outputs

BITS = 16  # duty_u16 (MicroPython >= 1.19 on the esp32 port)


def outputs(cfg):
    o = cfg.get("outputs") or {}
    pwm = o.get("pwm") or {}
    freq = pwm.get("freq", 1000)
    pwms = []
    for p in pwm.get("pins", (None, None, None, None)):
        pwms.append(None if p is None else PWM(Pin(p), freq=freq, duty_u16=0))
    out = None
    d = o.get("dmx")
    if d:
        de = d.get("de")
        if de is not None:
            Pin(de, Pin.OUT, value=1)  # the transceiver drives the line
        out = dmx.DmxOut(dmx.open_uart(d.get("uart", 1), d["tx"]), cfg.get("dmx_slots", 24))
    return Outputs(pwms, out, BITS, cfg.get("gamma", 2.2))
