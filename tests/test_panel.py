"""The kit panel through gpiozero's MockFactory: the crew presses or holds the button and reads the LED."""

from __future__ import annotations

import asyncio
import threading

import pytest

from agent.panel import PATTERNS, KitPanel
from tests.conftest import wait_until

pytest.importorskip("gpiozero")
from gpiozero.pins.mock import MockFactory, MockPWMPin  # noqa: E402

PINS = {"button": 27, "red": 5, "green": 6, "blue": 13}
HOLD = 0.2


class Calls:
    def __init__(self):
        self.press = 0
        self.hold = 0
        self.threads: list[str] = []

    def on_press(self):
        self.press += 1
        self.threads.append(threading.current_thread().name)

    def on_hold(self):
        self.hold += 1
        self.threads.append(threading.current_thread().name)


@pytest.fixture
def factory():
    f = MockFactory()
    yield f
    f.close()


@pytest.fixture
def calls():
    return Calls()


@pytest.fixture
def panel(factory, calls):
    p = KitPanel(PINS, factory, calls.on_press, calls.on_hold, hold_time=HOLD)
    yield p
    p.close()


def button(factory):
    return factory.pin(PINS["button"])


def rgb(factory) -> tuple[float, float, float]:
    return tuple(float(factory.pin(PINS[c]).state) for c in ("red", "green", "blue"))


def test_panel_button_idles_high_with_the_pull_up(panel, factory):
    assert button(factory).state == 1
    assert not panel.button.is_pressed


def test_panel_press_runs_the_self_test_once(panel, factory, calls):
    button(factory).drive_low()
    button(factory).drive_high()
    wait_until(lambda: calls.press == 1, timeout=2, what="on_press after a short press")
    assert calls.hold == 0
    # the hold timer must not fire late for a press that is over
    threading.Event().wait(HOLD * 2)
    assert (calls.press, calls.hold) == (1, 0)


def test_panel_hold_shuts_down_once_and_is_not_a_press(panel, factory, calls):
    button(factory).drive_low()
    wait_until(lambda: calls.hold == 1, timeout=5, what="on_hold after holding the button")
    assert calls.press == 0  # fired while still held, before the release
    button(factory).drive_high()
    threading.Event().wait(HOLD * 2)
    assert (calls.press, calls.hold) == (0, 1)


def test_panel_press_after_a_hold_is_a_press_again(panel, factory, calls):
    button(factory).drive_low()
    wait_until(lambda: calls.hold == 1, timeout=5, what="on_hold")
    button(factory).drive_high()
    button(factory).drive_low()
    button(factory).drive_high()
    wait_until(lambda: calls.press == 1, timeout=2, what="on_press after the hold")
    assert calls.hold == 1


def test_panel_release_racing_the_hold_timer_fires_exactly_one(panel, calls):
    # The release and the hold timer arrive together: whichever takes the lock first wins.
    panel._pressed()
    racers = [threading.Thread(target=panel._held), threading.Thread(target=panel._released)]
    for t in racers:
        t.start()
    for t in racers:
        t.join()
    assert calls.press + calls.hold == 1


def test_panel_callbacks_run_on_the_asyncio_loop_when_given(factory):
    async def scenario():
        loop = asyncio.get_running_loop()
        pressed, held = asyncio.Event(), asyncio.Event()
        where = []

        def on_press():
            where.append(threading.current_thread() is threading.main_thread())
            pressed.set()

        async def on_hold():
            held.set()

        p = KitPanel(PINS, factory, on_press, on_hold, hold_time=HOLD, loop=loop)
        try:
            await asyncio.to_thread(lambda: (button(factory).drive_low(), button(factory).drive_high()))
            await asyncio.wait_for(pressed.wait(), 2)
            await asyncio.to_thread(button(factory).drive_low)
            await asyncio.wait_for(held.wait(), 5)
        finally:
            p.close()
        return where

    assert asyncio.run(scenario()) == [True]  # driven from a worker thread, run on the loop's thread


def test_panel_failing_handler_does_not_break_the_button(factory):
    presses = []

    def broken():
        presses.append(1)
        raise RuntimeError("self-test crashed")

    with KitPanel(PINS, factory, broken, lambda: None, hold_time=HOLD) as p:
        for _ in range(2):
            button(factory).drive_low()
            button(factory).drive_high()
        assert len(presses) == 2
        assert p.button.value == 0


def test_panel_show_ready_is_steady_green(panel, factory):
    panel.show("ready")
    assert rgb(factory) == (0, 1, 0)
    factory.pin(PINS["green"]).clear_states()
    threading.Event().wait(0.3)
    assert len(factory.pin(PINS["green"]).states) == 1  # no toggling


def _toggles(factory, color: str, at_least: int = 3):
    pin = factory.pin(PINS[color])
    pin.clear_states()
    wait_until(lambda: len(pin.states) > at_least, timeout=6, what=f"the {color} LED to blink")
    values = [bool(s.state) for s in pin.states]
    assert True in values and False in values
    return values


@pytest.mark.parametrize("status, lit, dark", [
    ("booting", ("blue",), ("red", "green")),
    ("degraded", ("red", "green"), ("blue",)),
    ("not_ready", ("red",), ("green", "blue")),
    ("fault", ("red",), ("green", "blue")),
])
def test_panel_show_blinking_status(panel, factory, status, lit, dark):
    panel.show(status)
    for color in lit:
        _toggles(factory, color, at_least=1)
    for color in dark:
        assert factory.pin(PINS[color]).state == 0


def test_panel_show_degraded_blinks_red_and_green_together(panel, factory):
    panel.show("degraded")
    wait_until(lambda: rgb(factory) == (1, 1, 0), timeout=3, what="amber")
    wait_until(lambda: rgb(factory) == (0, 0, 0), timeout=3, what="amber's dark half")


def test_panel_show_fault_blinks_faster_than_degraded():
    assert PATTERNS["fault"][1] < PATTERNS["booting"][1] < PATTERNS["degraded"][1]


def test_panel_show_replaces_a_blink_with_steady(panel, factory):
    panel.show("booting")
    _toggles(factory, "blue", at_least=1)
    panel.show("ready")
    assert rgb(factory) == (0, 1, 0)
    factory.pin(PINS["blue"]).clear_states()
    threading.Event().wait(0.7)
    assert rgb(factory) == (0, 1, 0) and len(factory.pin(PINS["blue"]).states) == 1


def test_panel_show_off_and_unknown(panel, factory):
    panel.show("ready")
    panel.show("off")
    assert rgb(factory) == (0, 0, 0)
    with pytest.raises(ValueError, match="unknown panel status"):
        panel.show("happy")


def test_panel_booting_pulses_with_pwm(calls):
    factory = MockFactory(pin_class=MockPWMPin)
    try:
        with KitPanel(PINS, factory, calls.on_press, calls.on_hold, pwm=True) as p:
            p.show("booting")
            blue = factory.pin(PINS["blue"])
            wait_until(lambda: any(0 < s.state < 1 for s in blue.states), timeout=3, what="blue fading")
            p.show("ready")
            assert rgb(factory) == (0, 1, 0)
    finally:
        factory.close()


def test_panel_missing_pin_is_refused(factory, calls):
    with pytest.raises(ValueError, match="blue"):
        KitPanel({"button": 27, "red": 5, "green": 6}, factory, calls.on_press, calls.on_hold)


def test_panel_from_manifest_spec(factory, calls):
    from kits.manifest import load_manifest
    from tests.conftest import REPO

    spec = load_manifest(REPO / "kits/examples/listening-room.toml").device("lr-panel")
    with KitPanel.from_spec(spec, factory, calls.on_press, calls.on_hold, hold_time=HOLD) as p:
        p.show("ready")
        assert factory.pin(spec.pins["green"]).state == 1


def _groups_of_blinks(pin, groups: int) -> list[int]:
    """Rising edges counted between the code's pauses (dark for CODE_PAUSE_S; a blink's dark is 0.35 s)."""
    from agent.panel import CODE_PAUSE_S

    def counted():
        rises = [s.timestamp for a, s in zip(pin.states, pin.states[1:]) if s.state and not a.state]
        counts, n = [], 0
        for a, b in zip(rises, rises[1:]):
            n += 1
            if b - a > CODE_PAUSE_S * 0.6:  # a pause ends the group
                counts.append(n)
                n = 0
        return counts[1:] if len(counts) > groups else None  # the first group may have been cut
    return wait_until(counted, timeout=20, what=f"{groups} whole groups of blinks")


@pytest.mark.parametrize("status, code, colour", [("not_ready", 4, "red"), ("degraded", 2, "green")])
def test_panel_says_which_check_failed_by_a_count_of_blinks(panel, factory, status, code, colour):
    pin = factory.pin(PINS[colour])
    pin.clear_states()
    panel.show(status, code)
    assert _groups_of_blinks(pin, 2)[:2] == [code, code]
    assert factory.pin(PINS["blue"]).state == 0
    panel.show("ready")  # the code's thread stops: steady green from here
    assert rgb(factory) == (0, 1, 0)
    pin = factory.pin(PINS["green"])
    pin.clear_states()
    threading.Event().wait(0.8)
    assert len(pin.states) == 1


def test_panel_code_only_for_a_status_that_has_one(panel):
    with pytest.raises(ValueError, match="no blink code"):
        panel.show("ready", 2)
    with pytest.raises(ValueError, match="no blink code"):
        panel.show("not_ready", 0)


def test_panel_describes_what_it_shows_for_the_terminal():
    from agent.panel import describe

    assert describe("not_ready", 4) == "red, 4 short blinks then a pause: a printer"
    assert describe("degraded", 1) == "amber, 1 long blink then a pause: the kit's broker / network"
    assert describe("ready") == "green, steady"


def test_panel_close_stops_a_running_code(factory, calls):
    p = KitPanel(PINS, factory, calls.on_press, calls.on_hold)
    p.show("not_ready", 3)
    thread = p._code_thread
    p.close()
    assert thread is not None and not thread.is_alive()
