"""ELK-BLEDOM lamp frames: the encoder's exact bytes and the simulated lamp's decoder."""

from __future__ import annotations

import asyncio

import pytest
from bleak import BleakClient

from agent.drivers.lamp import (
    WRITE_UUID,
    LampState,
    encode_brightness,
    encode_colour,
    encode_power,
    level_to_pct,
    pct_to_level,
)
from simulators.lamp import SimulatedElkLamp, simulated_lamp


def test_frames_are_the_documented_bytes() -> None:
    # docs/ble-lamp.md; the power frames are those of the "ELK-BLEDOM" entry of the
    # elkbledom Home Assistant integration, colour as reverse-engineered from the app.
    assert encode_power(True) == bytes.fromhex("7E0004F00001FF00EF")
    assert encode_power(False) == bytes.fromhex("7E0004000000FF00EF")
    assert encode_colour(255, 160, 60) == bytes.fromhex("7E000503FFA03C00EF")
    assert encode_brightness(100) == bytes.fromhex("7E00016400000000EF")


@pytest.mark.parametrize("bad", [(256, 0, 0), (0, -1, 0)])
def test_colour_out_of_range_is_refused(bad) -> None:
    with pytest.raises(ValueError):
        encode_colour(*bad)


def test_level_maps_onto_the_lamps_percent_and_back() -> None:
    assert [level_to_pct(v) for v in (0, 1, 128, 255)] == [0, 1, 50, 100]
    assert [pct_to_level(p) for p in (0, 50, 100)] == [0, 128, 255]
    with pytest.raises(ValueError):
        level_to_pct(256)


def test_state_frames_put_colour_and_level_before_power() -> None:
    state = LampState(on=True, level=255, rgb=(1, 2, 3))
    assert [f[2] for f in state.frames()] == [0x05, 0x01, 0x04]
    assert LampState().frames() == []


def test_simulated_lamp_decodes_frames_into_what_it_shows() -> None:
    lamp = SimulatedElkLamp()
    for frame in (encode_colour(200, 100, 0), encode_brightness(50), encode_power(True)):
        lamp.on_write(WRITE_UUID, frame)
    assert lamp.shows == (100, 50, 0) and lamp.frames_ok == 3
    lamp.on_write(WRITE_UUID, encode_power(False))
    assert lamp.shows == (0, 0, 0)


@pytest.mark.parametrize("frame", [
    bytes.fromhex("7E0004F00001FF00"),  # cut short
    bytes.fromhex("7F0004F00001FF00EF"),  # wrong head
    bytes.fromhex("7E0004F00001FF0000"),  # wrong tail
    bytes.fromhex("7E0004F00001FF00EFEF"),  # too long
])
def test_corrupt_frames_are_counted_and_change_nothing(frame: bytes) -> None:
    lamp = SimulatedElkLamp()
    before = lamp.shows
    lamp.on_write(WRITE_UUID, frame)
    assert (lamp.frames_bad, lamp.frames_ok, lamp.shows) == (1, 0, before)


def test_effect_and_speed_frames_are_counted_as_unknown() -> None:
    lamp = SimulatedElkLamp()
    lamp.on_write(WRITE_UUID, bytes.fromhex("7E00038703000000EF"))  # an effect
    lamp.on_write(WRITE_UUID, bytes.fromhex("7E00025000000000EF"))  # effect speed
    assert (lamp.frames_unknown, lamp.frames_ok, lamp.frames_bad) == (2, 0, 0)


def test_raw_bleak_writes_reach_the_simulated_lamp_over_the_backend() -> None:
    backend, lamp = simulated_lamp()

    async def scenario():
        async with asyncio.timeout(5):
            async with BleakClient(lamp.address, backend=backend) as client:
                char = client.services.get_characteristic(WRITE_UUID)
                assert "write" in char.properties
                await client.write_gatt_char(WRITE_UUID, b"\x7e\x00", response=True)
                await client.write_gatt_char(WRITE_UUID, encode_colour(0, 0, 255), response=True)
    asyncio.run(scenario())
    assert (lamp.frames_bad, lamp.rgb) == (1, (0, 0, 255))
    assert lamp.writes[-1] == (WRITE_UUID, encode_colour(0, 0, 255))
