"""Relay lights on GPIO, driven through gpiozero's MockFactory: what a crew sees at the floodlight."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agent.drivers.relay import GpioError, GpioUnavailable, RelayLight, open_pin_factory
from kits.manifest import DeviceSpec

pytest.importorskip("gpiozero")
from gpiozero.pins.mock import MockFactory  # noqa: E402


@pytest.fixture
def factory():
    f = MockFactory()
    yield f
    f.close()


def levels(factory, pin: int) -> list[bool]:
    """The pin's level history, one entry per change, starting with its level when recorded."""
    return [bool(s.state) for s in factory.pin(pin).states]


def no_sleep(_s: float) -> None:
    pass


def test_import_relay_without_gpiozero_succeeds():
    code = ("import sys; sys.modules['gpiozero'] = None\n"
            "import agent.drivers.relay, agent.panel\n"
            "print('imported')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "imported"


def test_relay_ordinary_light_starts_off_and_switches(factory):
    with RelayLight("lr-lamp", 17, factory) as light:
        assert factory.pin(17).state == 0 and not light.is_on
        light.on()
        assert factory.pin(17).state == 1 and light.is_on
        light.off()
        assert factory.pin(17).state == 0
        light.toggle()
        assert factory.pin(17).state == 1


def test_relay_safety_light_starts_on(factory):
    with RelayLight("lr-flood", 17, factory, safety=True) as light:
        assert light.is_on
        assert factory.pin(17).state == 1


def test_relay_active_low_board_inverts_the_pin(factory):
    with RelayLight("lr-flood", 17, factory, active_high=False, safety=True) as light:
        assert factory.pin(17).state == 0  # lamp on = input pulled low on an active-low module
        light.off()
        assert factory.pin(17).state == 1


def test_relay_flash_blinks_and_restores_an_off_light(factory):
    with RelayLight("lr-lamp", 17, factory) as light:
        factory.pin(17).clear_states()
        light.flash(times=3, period_s=0.01)
        assert levels(factory, 17) == [False, True, False, True, False, True, False]
        assert not light.is_on and factory.pin(17).state == 0


def test_relay_flash_dips_a_lit_safety_light_and_leaves_it_on(factory):
    with RelayLight("lr-flood", 17, factory, safety=True) as light:
        factory.pin(17).clear_states()
        light.flash(times=2, period_s=0.01)
        assert levels(factory, 17) == [True, False, True, False, True]
        assert light.is_on and factory.pin(17).state == 1


def test_relay_flash_leaves_a_safety_light_on_even_when_it_was_off(factory):
    with RelayLight("lr-flood", 17, factory, safety=True) as light:
        light.off()
        light.flash(times=1, period_s=0.01)
        assert light.is_on and factory.pin(17).state == 1


def test_relay_flash_interrupted_still_leaves_safety_light_on(factory):
    calls = []

    def sleep_then_fail(_s: float) -> None:
        calls.append(_s)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with RelayLight("lr-flood", 17, factory, safety=True, sleep=sleep_then_fail) as light:
        with pytest.raises(KeyboardInterrupt):
            light.flash(times=5, period_s=0.01)
        assert light.is_on and factory.pin(17).state == 1


def test_relay_telemetry_reports_on_and_reachable(factory):
    with RelayLight("lr-flood", 17, factory, safety=True) as light:
        t = light.telemetry(boot="ab12", seq=3, ts=1_700_000_000_000)
        assert (t.kind, t.reachable, t.on, t.level, t.rgb) == ("light", True, True, None, None)
        light.off()
        assert light.telemetry(boot="ab12", seq=4, ts=1_700_000_000_001).on is False


def test_relay_self_test_flashes_and_finds_nothing_on_a_good_pin(factory):
    with RelayLight("lr-flood", 17, factory, safety=True, sleep=no_sleep) as light:
        factory.pin(17).clear_states()
        assert light.self_test("lr-flood") == []
        assert levels(factory, 17) == [True, False, True, False, True]


def test_relay_self_test_reports_a_failing_gpio_as_a_fault_for_a_safety_light(factory):
    with RelayLight("lr-flood", 17, factory, safety=True, sleep=no_sleep) as light:
        factory.pin(17).function = "input"  # the pin is taken away: every write now fails
        problems = light.self_test("lr-flood")
        assert [(p.device, p.severity) for p in problems] == [("lr-flood", "fault")]
        assert "GPIO 17" in problems[0].what
        assert light.reachable is False
        assert light.telemetry(boot="ab12", seq=1, ts=1).reachable is False


def test_relay_self_test_reports_a_failing_gpio_as_a_warning_for_an_ordinary_light(factory):
    with RelayLight("lr-lamp", 17, factory, sleep=no_sleep) as light:
        factory.pin(17).function = "input"
        assert [p.severity for p in light.self_test("lr-lamp")] == ["warning"]


def test_relay_pin_in_use_raises_gpio_error(factory):
    with RelayLight("lr-flood", 17, factory):
        with pytest.raises(GpioError, match="GPIO 17"):
            RelayLight("lr-other", 17, factory)


def test_relay_from_manifest_spec_uses_pin_and_safety(factory):
    spec = DeviceSpec(id="lr-flood", role="light", model="relay", bus="gpio:22", expect={"safety": True})
    with RelayLight.from_spec(spec, factory) as light:
        assert (light.pin, light.safety, light.is_on) == (22, True, True)
        assert factory.pin(22).state == 1
    low = DeviceSpec(id="lr-lamp", role="light", model="relay", bus="gpio:23", active_high=False)
    with RelayLight.from_spec(low, factory) as light:  # an active-low module: off is a high pin
        assert not light.is_on and factory.pin(23).state == 1
        light.on()
        assert factory.pin(23).state == 0


def test_open_pin_factory_simulate_gives_mock():
    f = open_pin_factory(simulate=True)
    try:
        assert isinstance(f, MockFactory)
    finally:
        f.close()


def test_open_pin_factory_never_falls_back_to_the_mock(monkeypatch):
    monkeypatch.delenv("GPIOZERO_PIN_FACTORY", raising=False)
    try:
        f = open_pin_factory()
    except GpioUnavailable as exc:
        assert "--simulate" in str(exc)
    else:  # on a real Pi a real backend loads
        try:
            assert not isinstance(f, MockFactory)
        finally:
            f.close()


def test_open_pin_factory_unknown_backend_is_refused():
    with pytest.raises(GpioUnavailable, match="nosuch"):
        open_pin_factory(backend="nosuch")
