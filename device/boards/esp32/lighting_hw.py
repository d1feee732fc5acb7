# lighting_hw.py for the ESP32: four LEDC PWM channels (MOSFET-driven RGBW strip) and
# DMX512 out on a hardware UART through an RS-485 transceiver (transmit only: DE held high).
#
# The role's config (lighting.json on flash) names the pins:
#   "pwm_pins": [r, g, b, w] (null where a channel is not fitted), "pwm_freq": 1000,
#   "dmx_uart": 1, "dmx_tx": 17, "dmx_de": 4 (optional), "dmx_slots": 24, "gamma": 2.2
from machine import PWM, Pin

import dmx
from scene import Outputs

BITS = 16  # duty_u16 (MicroPython >= 1.19 on the esp32 port)


def outputs(cfg):
    freq = cfg.get("pwm_freq", 1000)
    pwms = []
    for p in cfg.get("pwm_pins", (None, None, None, None)):
        pwms.append(None if p is None else PWM(Pin(p), freq=freq, duty_u16=0))
    out = None
    tx = cfg.get("dmx_tx")
    if tx is not None:
        de = cfg.get("dmx_de")
        if de is not None:
            Pin(de, Pin.OUT, value=1)  # the transceiver drives the line
        out = dmx.DmxOut(dmx.open_uart(cfg.get("dmx_uart", 1), tx), cfg["dmx_slots"])
    return Outputs(pwms, out, BITS, cfg.get("gamma", 2.2))
