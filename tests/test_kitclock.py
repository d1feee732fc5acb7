"""The kit's clock on the Pi: where its time comes from, the last known time kept on disk, and the
time it serves to the kit's ESP32s on popkit/v1/<kit>/time over a real Mosquitto."""

from __future__ import annotations

import json
import secrets

import pytest

from agent.kitclock import (
    PLAUSIBLE_AFTER_MS,
    ClockHardware,
    KitClock,
    KitClockService,
    SystemClock,
    clock_problem,
)
from agent.link import FleetLink
from agent.statewatch import StateWatch
from kits.contract import KitTime, State, decode, encode, time_topic, topic
from tests.conftest import publisher, wait_until

KIT = "gig"
T0 = 1_795_280_000.0  # seconds: a plausible "now" (2026-11)


class FakeClock(ClockHardware):
    """The machine's clock parts, driven by the test."""

    def __init__(self, now: float = T0, synced: bool | None = False, rtc: float | None = None):
        self.wall, self.mono, self.synced, self.rtc = now, 1000.0, synced, rtc

    def now(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def kernel_synced(self) -> bool | None:
        return self.synced

    def rtc_seconds(self) -> float | None:
        return self.rtc

    def elapse(self, s: float) -> None:
        self.wall += s
        self.mono += s


def keep(path, ms: int) -> None:
    path.write_text(json.dumps({"ts": ms, "src": "ntp"}))


# ---------------------------------------------------------------- the contract


def test_the_time_message_and_the_clock_fields_are_checked_and_optional():
    from kits.contract import ContractError

    assert decode("time", b'{"ts":1795280000000,"src":"rtc","synced":true}').src == "rtc"
    for bad in (b'{"ts":1795280000000,"src":"gps","synced":true}', b'{"ts":-1,"src":"ntp","synced":true}',
                b'{"ts":1795280000000,"src":"ntp"}', b'{"ts":1795280000000,"src":"ntp","synced":true,"tz":"UTC"}'):
        with pytest.raises(ContractError):
            decode("time", bad)
    old = b'{"boot":"ab12","seq":0,"ts":5,"online":true,"role":"scanner"}'  # firmware before the clock
    assert decode("state", old).clock is None and decode("state", old).reset_cause is None
    with pytest.raises(ContractError, match="clock"):
        decode("state", old[:-1] + b',"clock":"gps"}')
    checkin = b'{"boot":"ab12","seq":3,"ts":5,"kind":"checkin","data":{"event":"GIG-1","ticket":"T1","verdict":"admitted"'
    assert decode("event", checkin + b',"clock":"unset"}}').data["clock"] == "unset"
    with pytest.raises(ContractError, match="data.clock"):
        decode("event", checkin + b',"clock":"synced"}}')
    assert time_topic("gig") == "popkit/v1/gig/time"


# ---------------------------------------------------------------- where the Pi's time comes from


def test_a_synchronised_kernel_clock_is_ntp_time(tmp_path):
    r = KitClock(tmp_path / "clock.json", FakeClock(synced=True)).read()
    assert (r.ts, r.src, r.synced, r.state) == (int(T0 * 1000), "ntp", True, "synced")


def test_an_rtc_that_set_the_clock_at_boot_is_synced_time(tmp_path):
    r = KitClock(tmp_path / "clock.json", FakeClock(rtc=T0 - 1)).read()
    assert (r.src, r.synced, r.state) == ("rtc", True, "synced")


def test_an_rtc_with_a_flat_coin_cell_is_not_trusted(tmp_path):
    """A DS3231 whose battery died counts from 2000: behind the last known time, so not the kit's time."""
    path = tmp_path / "clock.json"
    keep(path, int((T0 - 3600) * 1000))
    r = KitClock(path, FakeClock(rtc=946_684_800.0)).read()
    assert (r.src, r.synced, r.state) == ("last_known", False, "kit")


def test_an_rtc_the_system_clock_disagrees_with_did_not_set_it(tmp_path):
    r = KitClock(tmp_path / "clock.json", FakeClock(rtc=T0 - 7200)).read()
    assert (r.src, r.synced) == ("last_known", False)


def test_a_pi_booted_offline_behind_its_last_known_time_serves_that_and_says_so(tmp_path):
    """No RTC, no uplink: the system clock came up behind the last time the agent knew (fake-hwclock
    restored an older time). The kit's clock goes on from the last known time, never backwards; the
    agent's own clock is `unset` and the crew is told why."""
    path = tmp_path / "clock.json"
    last = int(T0 * 1000)
    keep(path, last)
    hw = FakeClock(now=T0 - 3000)
    clock = KitClock(path, hw)
    r = clock.read()
    assert (r.ts, r.src, r.synced, r.state) == (last, "last_known", False, "unset")
    assert clock.behind_ms == 3_000_000
    problem = clock_problem("gig-agent", r.state)
    assert problem is not None and problem.severity == "warning" and "behind the last time it knew" in problem.what
    hw.elapse(42)
    assert clock.read().ts == last + 42_000  # runs on from the last known time
    hw.synced = True  # the uplink came back: chrony stepped the clock
    hw.wall = T0 + 600
    r = clock.read()
    assert (r.ts, r.src, r.synced, r.state) == (int((T0 + 600) * 1000), "ntp", True, "synced")
    assert clock_problem("gig-agent", clock.read().state) is None


def test_a_clock_ahead_of_the_last_known_time_is_the_kit_time_unsynced(tmp_path):
    path = tmp_path / "clock.json"
    keep(path, int((T0 - 60) * 1000))
    clock = KitClock(path, FakeClock())
    r = clock.read()
    assert (r.ts, r.src, r.synced, r.state) == (int(T0 * 1000), "last_known", False, "kit")
    assert clock_problem("gig-agent", r.state) is None  # unverified, but not behind: said in its state, not a problem


def test_the_last_known_time_survives_a_restart_and_never_goes_backwards(tmp_path):
    path = tmp_path / "clock.json"
    hw = FakeClock(synced=True)
    clock = KitClock(path, hw)
    clock.save()
    assert KitClock(path, hw).last_known_ms == int(T0 * 1000)
    hw.wall -= 100  # a clock stepped back
    clock.save()
    assert json.loads(path.read_text())["ts"] == int(T0 * 1000)
    assert not path.with_name(path.name + ".tmp").exists()


def test_no_plausible_time_at_all_is_unset_and_not_kept(tmp_path):
    """A first boot with no RTC and no uplink reads 1970: no time to keep or to trust."""
    path = tmp_path / "clock.json"
    clock = KitClock(path, FakeClock(now=1000.0))
    r = clock.read()
    assert r.state == "unset" and r.ts < PLAUSIBLE_AFTER_MS
    clock.save(r)
    assert not path.exists()


def test_an_unreadable_last_known_time_is_ignored(tmp_path, caplog):
    path = tmp_path / "clock.json"
    path.write_text("{not json")
    clock = KitClock(path, FakeClock())
    assert clock.last_known_ms is None and clock.read().state == "kit"
    assert str(path) in caplog.text


def test_the_real_system_clock_answers_or_says_it_cannot_tell(tmp_path):
    """On this machine: adjtimex (or timedatectl) gives a yes/no or None, never an exception; an
    absent RTC reads as None."""
    hw = SystemClock(rtc_sysfs=tmp_path / "no-rtc")
    assert hw.kernel_synced() in (True, False, None)
    assert hw.rtc_seconds() is None
    (tmp_path / "rtc").write_text(f"{int(T0)}\n")
    assert SystemClock(rtc_sysfs=tmp_path / "rtc").rtc_seconds() == T0


# ---------------------------------------------------------------- serving it on the kit broker


@pytest.fixture
def service(broker, tmp_path):
    """The daemon's kit clock against the test's broker: a state watch, the agent's link, and a
    publish period long enough that any second message can only come from a device's birth."""
    made = []

    def make(hw: ClockHardware, period_s: float = 600.0, link: FleetLink | None = None):
        watch = StateWatch(KIT, broker.url).start()
        svc = KitClockService(KIT, broker.url, tmp_path / "agent", link=link, watch=watch, period_s=period_s,
                              hw=hw).start()
        made.append((svc, watch))
        assert watch.ready.wait(5), "state watch did not subscribe"
        return svc

    yield make
    for svc, watch in made:
        svc.stop()
        watch.stop()


def time_messages(collector) -> list[KitTime]:
    return [decode("time", p) for p in collector.on(f"/{KIT}/time")]


def test_kit_time_is_published_at_qos0_unretained_and_valid(broker, collect, service):
    seen = collect(time_topic(KIT))
    service(FakeClock(synced=True))
    wait_until(lambda: time_messages(seen), 10, what="the first kit time message")
    msg = time_messages(seen)[0]
    assert msg == KitTime(ts=int(T0 * 1000), src="ntp", synced=True)
    assert all(retained is False for _t, _p, retained in seen.messages)
    # Not retained at the broker either: a late subscriber gets the retained marker that follows
    # the time topic in its SUBSCRIBE, and no time before it.
    pub = publisher(broker.url)
    pub.publish(f"popkit/v1/{KIT}/marker", b"1", qos=1, retain=True).wait_for_publish(5)
    late = collect(time_topic(KIT), f"popkit/v1/{KIT}/marker")
    wait_until(lambda: late.on("/marker"), 10, what="the retained marker")
    # A live time message may follow the marker (the service publishes every second): only what
    # came before it, or came flagged retained, would be a kept time.
    got = list(late.messages)
    before = got[:next(i for i, (t, _p, _r) in enumerate(got) if t.endswith("/marker"))]
    assert [t for t, _p, _r in before if t.endswith(f"/{KIT}/time")] == []
    assert not any(r for t, _p, r in got if t.endswith(f"/{KIT}/time"))
    pub.disconnect()
    pub.loop_stop()


def test_a_device_birth_gets_the_kit_time_at_once(broker, collect, service):
    """A scanner that just joined (its birth state, clock unset) gets the time without waiting for
    the period (here 10 minutes)."""
    seen = collect(time_topic(KIT))
    hw = FakeClock()
    svc = service(hw)
    wait_until(lambda: len(time_messages(seen)) >= 1, 10, what="the kit time sent on connect")
    first = len(time_messages(seen))
    hw.elapse(5)
    pub = publisher(broker.url)
    birth = State(boot=secrets.token_hex(4), seq=0, ts=946_684_800_000, online=True, role="scanner",
                  fw="scanner-0.2.0", clock="unset", reset_cause="power")
    pub.publish(topic(KIT, "gig-door-1", "state"), encode(birth), qos=1, retain=True).wait_for_publish(5)
    wait_until(lambda: len(time_messages(seen)) > first, 10, what="the kit time sent on the scanner's birth")
    msg = time_messages(seen)[-1]
    assert (msg.ts, msg.src, msg.synced) == (int((T0 + 5) * 1000), "last_known", False)
    assert svc.publisher.sent >= 2
    pub.disconnect()
    pub.loop_stop()


def test_the_agents_state_carries_its_clock(broker, collect, service, tmp_path):
    """The agent's retained state says its clock: unset while the Pi runs behind its last known time,
    synced (published again) once the kernel says the clock is synchronised."""
    (tmp_path / "agent").mkdir()
    keep(tmp_path / "agent" / f"{KIT}-clock.json", int(T0 * 1000))
    hw = FakeClock(now=T0 - 3000)
    states = collect(topic(KIT, "gig-agent", "state"))
    link = FleetLink(KIT, "gig-agent", "agent", broker.url, tmp_path / "outbox.db").start()
    try:
        svc = service(hw, period_s=0.2, link=link)
        wait_until(lambda: any(decode("state", p).clock == "unset" for p in states.on("/state")), 10,
                   what="the agent's state with clock unset")
        assert svc.clock.read().state == "unset"
        hw.synced = True
        hw.wall = T0 + 10
        wait_until(lambda: decode("state", states.on("/state")[-1]).clock == "synced", 10,
                   what="the agent's state again, clock synced")
        assert json.loads((tmp_path / "agent" / f"{KIT}-clock.json").read_text())["ts"] >= int(T0 * 1000)
    finally:
        link.stop()


def test_the_period_is_an_agent_setting(monkeypatch):
    from agent.settings import AgentSettings

    monkeypatch.setenv("POPKIT_TIME_PERIOD_S", "2.5")
    assert AgentSettings().time_period_s == 2.5
    monkeypatch.delenv("POPKIT_TIME_PERIOD_S")
    assert AgentSettings().time_period_s == 10.0


def test_the_agent_process_serves_the_kit_time_and_states_its_clock(broker, collect, tmp_path):
    """`popkit agent run` as systemd starts it: the kit's time on popkit/v1/<kit>/time, valid by the
    contract, and the agent's retained state naming its clock."""
    import subprocess
    import sys

    from tests.conftest import DEMO_KIT

    seen = collect(time_topic("demo"), topic("demo", "demo-agent", "state"))
    agent = subprocess.Popen([sys.executable, "-m", "popkit.cli", "agent", "run", "--kit", str(DEMO_KIT), "--mqtt",
                              broker.url, "--data", str(tmp_path / "agent"), "--simulate"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: seen.on("/demo/time"), 30, what="the agent's first kit time message")
        msg = decode("time", seen.on("/demo/time")[0])
        assert msg.src in ("ntp", "rtc", "last_known") and msg.synced == (msg.src != "last_known")
        # Its birth may go before the clock is read: then its state is published again, with the clock.
        wait_until(lambda: (p := seen.on("/demo-agent/state")) and decode("state", p[-1]).clock, 30,
                   what="the agent's state with its clock")
        state = decode("state", seen.on("/demo-agent/state")[-1])
        assert state.online and state.clock in ("synced", "kit")
    finally:
        agent.terminate()
        agent.wait(15)
    assert (tmp_path / "agent" / "demo-clock.json").exists()  # the last known time, kept at stop


def test_an_agent_started_behind_its_last_known_time_serves_that_and_its_self_test_says_so(broker, collect, tmp_path):
    """A Pi with no RTC booted with no uplink: its clock came up behind the time the agent kept. The
    agent serves its last known time (never earlier), its state says its clock is unset, and the
    power-up self-test warns the crew."""
    import subprocess
    import sys
    import time

    from tests.conftest import DEMO_KIT

    data = tmp_path / "agent"
    data.mkdir()
    kept = int(time.time() * 1000) + 3_600_000  # the system clock is an hour behind what the agent knew
    keep(data / "demo-clock.json", kept)
    seen = collect(time_topic("demo"), topic("demo", "demo-agent", "state"), topic("demo", "demo-agent", "event"))
    agent = subprocess.Popen([sys.executable, "-m", "popkit.cli", "agent", "run", "--kit", str(DEMO_KIT), "--mqtt",
                              broker.url, "--data", str(data), "--simulate"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: seen.on("/demo/time"), 30, what="the agent's first kit time message")
        msg = decode("time", seen.on("/demo/time")[0])
        assert msg.src == "last_known" and not msg.synced and msg.ts >= kept
        wait_until(lambda: (p := seen.on("/demo-agent/state")) and decode("state", p[-1]).clock == "unset", 30,
                   what="the agent's state with its clock unset")

        def readiness():
            events = [decode("event", p) for p in seen.on("/demo-agent/event")]
            return next((e for e in events if e.kind == "readiness"), None)

        report = wait_until(readiness, 60, what="the power-up self-test's verdict")
        clock = [p for p in report.data["problems"] if "behind the last time it knew" in p["what"]]
        assert clock and clock[0]["severity"] == "warning" and clock[0]["device"] == "demo-agent"
    finally:
        agent.terminate()
        agent.wait(15)
