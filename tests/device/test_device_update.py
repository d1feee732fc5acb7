"""The ESP32's side of a field update (issue 18), end to end from real parts: the scanner firmware in the
real unix-port MicroPython, flashed as `popkit device flash` stages it, a real Mosquitto as the kit
broker, the agent's real kit-network server (agent/updates/server.py) serving a signed release from the
kit's cache (agent/updates/cache.py), and the offer retained on the door's update topic as the agent
publishes it (kits/contract.py UpdateOffer). tests/device/updaterig.py builds the kit.

What a crew would see: a door offered a release downloads it while it keeps scanning (every guest
answered), switches, boots the release on trial and commits it, and the
fleet reads downloading, trial, committed from its state (it downloads within its real 64 KB heap, its
live peak within the 48 KB budget); a download cut by a power cut or by the
agent going away goes on from what is on flash; a release the door must refuse is reported failed
with why and the door scans on, and is not fetched again at the next boot; a door stuck in a boot
loop takes, from safe mode, the update that fixes it.
"""

from __future__ import annotations

import json
import time


import pytest

from kits.contract import decode
from simulators.scanner import ScannerSim
from tests.conftest import publisher, wait_until
from tests.device import updaterig as rig
from tests.device.firmware import rom_names_bytes
from tests.device.test_scanner_app import door


@pytest.fixture
def sim():
    s = ScannerSim()
    yield s
    s.close()


@pytest.fixture
def kit(tmp_path, broker, sim):
    k = rig.Kit(tmp_path, broker.port, sim.port, rate=24 * 1024)
    yield k
    k.close()


@pytest.fixture
def pub(broker):
    c = publisher(broker.url)
    yield c
    c.disconnect()
    c.loop_stop()


def offer(pub, payload: bytes) -> None:
    pub.publish(rig.topic("update"), payload, qos=1, retain=True).wait_for_publish(5)


def updates(seen) -> list[dict]:
    """The update news of each state the door published, in order (None: a state without)."""
    out = []
    for p in seen.on("/state"):
        st = decode("state", p)
        if st.online:
            out.append(st.update.model_dump(exclude_none=True) if st.update else None)
    return out


def scan_until(dev, sim, kit, n0: int, stop, pace: float = 0.0, failure_ends: bool = False) -> int:
    """Scan fresh tickets one after another until ``stop()``, ``pace`` seconds apart (0: as fast as the door
    answers); every one must light the green lamp."""
    n = n0
    deadline = time.monotonic() + 60
    while not stop():
        time.sleep(pace)
        if dev.matching(r"UPDATE failed"):
            if failure_ends:
                break
            dev._fail("the download failed")
        if time.monotonic() > deadline:
            dev._fail("the download did not end within 60 s")
        n += 1
        assert door(sim, kit.ticket(n)) == "green", f"ticket {n} not admitted"
    return n - n0


# ------------------------------------------------------------------ the whole update

def test_a_door_downloads_while_scanning_switches_tries_and_commits(kit, sim, pub, collect):
    seen = collect(rig.topic("state"))
    release, size = kit.release("0.3.2")
    dev = kit.door_from_tree()
    dev.expect(r"READY", timeout=15)
    sim.wait_connected(1)
    wait_until(lambda: updates(seen), 15, what="the door online")
    assert door(sim, kit.ticket(1)) == "green"

    offer(pub, kit.offer(release))
    dev.expect(r"FETCH scanner-0.3.2 to b", timeout=15)
    during = scan_until(dev, sim, kit, 1, lambda: dev.matching(r"UPDATE switched"))
    assert dev.wait(20) == 75, "switched: the board resets into the new slot"
    assert during > 0, "the door scanned during the download"
    scans = len(dev.matching(r"SCAN admitted"))
    assert scans == during + 1, "every scan answered, each once"
    served = kit.relay.served()
    assert served == size, f"served {served} B of a {size} B release: each byte once"

    # the next boot: the new slot on trial, healthy, committed
    dev = kit.door_from_tree()
    dev.expect(r"ABBOOT b trial 1", timeout=15)
    dev.expect(r"READY", timeout=20)
    dev.expect(r"UPDATE committed b", timeout=30)
    assert door(sim, kit.ticket(9000)) == "green"
    wait_until(lambda: (updates(seen) or [None])[-1] == {"state": "committed", "why": "b", "fw": release}, 15,
               what="committed in the door's state")
    news = [u for u in updates(seen) if u]
    steps = [u["state"] for u in news]
    assert steps[steps.index("downloading"):] == ["downloading", "trial", "committed"], news
    assert all(u.get("fw") == release for u in news), news
    born = [decode("state", p) for p in seen.on("/state")]
    assert born[-1].fw == release
    dev.kill()


def files_requested(kit, after: int = 0) -> dict[str, list[tuple[int, int]]]:
    """Per file, the (start, end) of each range the door asked for (from request ``after`` on)."""
    out: dict[str, list[tuple[int, int]]] = {}
    for r in kit.relay.requests()[after:]:
        if "/files/" in r.path:
            out.setdefault(r.path.split("/files/", 1)[1], []).append((r.start, r.end))
    return out


def on_flash(kit) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in (kit.tree / "b").iterdir() if p.name != "manifest.json"}


# ------------------------------------------------------------------ cuts: power, the agent

def test_a_power_cut_mid_download_resumes_from_what_is_on_flash(kit, pub, sim):
    release, size = kit.release("0.3.2")
    offer(pub, kit.offer(release))
    dev = kit.door_from_tree()
    dev.expect(r"FETCH scanner-0.3.2 to b", timeout=20)
    wait_until(lambda: kit.relay.served() >= size // 2, 20, what="half the release downloaded")
    dev.kill()  # SIGKILL: a power cut, mid-download
    had = on_flash(kit)
    assert 0 < sum(had.values()) < size
    mark = len(kit.relay.requests())

    dev = kit.door_from_tree()  # the retained offer again at the next boot: it resumes
    dev.expect(r"UPDATE switched scanner-0.3.2", timeout=30)
    assert dev.wait(20) == 75
    again = files_requested(kit, mark)
    for path, ranges in again.items():
        assert ranges[0][0] == had.get(path, 0), f"{path}: asked from {ranges[0][0]}, {had.get(path, 0)} on flash"
    assert not set(p for p, n in had.items() if n == dict(kit_sizes(kit))[p]) & set(again), \
        "a file already whole on flash was asked for again"
    asked_again = sum(e - s + 1 for rs in again.values() for s, e in rs)
    assert asked_again == size - sum(had.values()), "nothing on flash fetched twice"
    assert kit.relay.served() <= size + 16 * 1024, "at most the span in flight at the cut came twice"
    kit.door_from_tree().expect(r"ABBOOT b trial 1", timeout=15)


def kit_sizes(kit) -> dict[str, int]:
    m = json.loads((kit.tree / "b" / "manifest.json").read_text())
    return {e["path"]: e["size"] for e in m["files"]}


def test_the_agent_gone_mid_download_is_waited_for_and_the_download_resumes(kit, pub, sim):
    release, size = kit.release("0.3.2")
    offer(pub, kit.offer(release))
    dev = kit.door_from_tree()
    dev.expect(r"FETCH scanner-0.3.2 to b", timeout=20)
    wait_until(lambda: kit.relay.served() >= size // 3, 20, what="a third of the release downloaded")
    kit.server.stop()  # the agent stops (its server with it) and the kit's network drops what was open
    kit.relay.cut()
    dev.expect(r"FETCH retry 2 ", timeout=20)  # it keeps trying, with backoff
    had = on_flash(kit)
    mark = len(kit.relay.requests())
    kit.server.start()  # the agent is back, on its port
    dev.expect(r"UPDATE switched scanner-0.3.2", timeout=30)
    assert dev.wait(20) == 75
    again = {p: rs for p, rs in files_requested(kit, mark).items()}
    asked_again = sum(e - s + 1 for rs in again.values() for s, e in rs)
    assert asked_again == size - sum(had.values()), "nothing on flash fetched twice"
    for path, ranges in again.items():
        assert ranges[0][0] == had.get(path, 0)


def test_the_agent_gone_for_good_the_door_gives_up_says_why_and_scans_on(kit, pub, sim, collect):
    seen = collect(rig.topic("state"))
    release, _size = kit.release("0.3.2")
    kit.server.stop()
    dev = kit.door_from_tree()
    dev.expect(r"READY", timeout=15)
    sim.wait_connected(1)
    offer(pub, kit.offer(release))
    dev.expect(r"UPDATE failed update server 127.0.0.1:\d+ unreachable after 4 tries", timeout=60)
    assert door(sim, kit.ticket(1)) == "green", "the door scans on"
    wait_until(lambda: (updates(seen) or [None])[-1] and updates(seen)[-1]["state"] == "failed", 15,
               what="failed in the door's state")
    assert updates(seen)[-1]["fw"] == release and "unreachable" in updates(seen)[-1]["why"]
    dev.kill()


# ------------------------------------------------------------------ refused bundles

def test_refused_bundles_report_failed_with_why_leave_the_app_running_and_are_not_fetched_again(
        kit, pub, sim, collect):
    seen = collect(rig.topic("state"))
    newer, _ = kit.release("0.3.2")
    lighting, _ = kit.release("0.4.9", role="lighting")
    older, _ = kit.release("0.3.0")
    before = sorted((kit.tree / "a").iterdir())
    dev = kit.door_from_tree()
    dev.expect(r"READY", timeout=15)
    sim.wait_connected(1)
    n = 0
    cases = [
        (newer, lambda: kit.set_key(bytes(32)), r"bad tag: the manifest is not what the kit's agent vouched for"),
        (lighting, lambda: kit.set_key(rig.KEY), r"wrong role: lighting, this device is a scanner"),
        (older, lambda: None, r"version 0.3.0 is not newer than the running scanner-0.3.1"),
    ]
    for rel, before_offer, why in cases:
        before_offer()
        mark = dev.mark()
        offer(pub, kit.offer(rel))
        dev.expect(rf"UPDATE failed {why}", timeout=20, after=mark)
        n += 1
        assert door(sim, kit.ticket(n)) == "green", "the door scans on"
        wait_until(lambda: (updates(seen) or [None])[-1] == {"state": "failed", "why": why.replace("\\", ""),
                                                             "fw": rel}, 15, what=f"failed: {why}")
    assert sorted((kit.tree / "a").iterdir()) == before and (kit.tree / "slot").read_text() == "a"
    assert not (kit.tree / "trial").exists()

    # rebooted with the last refused offer still retained: said again, not fetched again
    dev.kill()
    asked = len(kit.relay.requests())
    mark = len(seen.on("/state"))
    dev = kit.door_from_tree()
    dev.expect(r"READY", timeout=15)
    wait_until(lambda: any(json.loads(p).get("update", {}).get("state") == "failed"
                           for p in seen.on("/state")[mark:]), 15, what="the refusal reported again")
    time.sleep(1)
    assert len(kit.relay.requests()) == asked, "a refused offer is not fetched again"
    assert not dev.matching(r"FETCH")
    dev.kill()


# ------------------------------------------------------------------ a trial that rolls back

def test_a_release_that_rolled_back_is_not_taken_again_from_the_offer_still_retained(kit, pub, sim, collect):
    """A release whose app raises at import fails its trial and the next boot rolls back. The agent's
    offer is still retained (it withdraws it only once it sees the rollback in the door's state): the
    rolled-back door must answer it with rolled_back, the fw and why, and never fetch it again, that
    boot or the next; a new offer id for the same release (ops started a new rollout) is taken."""
    seen = collect(rig.topic("state"))
    release, _ = kit.release("0.3.2", app="raise RuntimeError('bad release')\n")
    dev = kit.door_from_tree()
    dev.expect(r"READY", timeout=15)
    sim.wait_connected(1)
    retained = kit.offer(release)
    offer(pub, retained)
    dev.expect(r"UPDATE switched scanner-0.3.2", timeout=40)
    assert dev.wait(20) == 75
    dev = kit.door_from_tree()  # the trial: its app raises at import, the board resets
    dev.expect(r"ABBOOT b trial 1", timeout=15)
    dev.expect(r"ABBOOT failed app raised RuntimeError", timeout=15)
    assert dev.wait(20) == 75
    asked = len(kit.relay.requests())
    assert asked > 0

    # the rolled-back boot: the same offer (still retained) arrives at once
    dev = kit.door_from_tree()
    dev.expect(r"ABBOOT a normal", timeout=15)
    dev.expect(r"READY", timeout=15)
    dev.expect(r"UPDATE rolled_back rolled_back b: app raised RuntimeError", timeout=20)  # settle(), ~10 s in
    time.sleep(3)  # past the settle window, which a download would wait out (fetch.take)
    assert not dev.matching(r"FETCH|UPDATE switched"), "the rolled-back release was fetched again"
    assert len(kit.relay.requests()) == asked, "no request to the update server after the rollback"
    news = [u for u in updates(seen) if u and u["state"] == "rolled_back" and u.get("fw") == release]
    assert news, f"rolled_back with the release's fw in the door's state: {updates(seen)}"
    assert "app raised RuntimeError" in news[0]["why"], news
    # settle()'s own rollback news (no fw: it does not know the release) does not replace the link's,
    # so the state the broker retains still names the release that failed
    assert updates(seen)[-1] == news[0], updates(seen)
    assert (kit.tree / "slot").read_text() == "a" and not (kit.tree / "trial").exists()
    assert door(sim, kit.ticket(1)) == "green", "the door scans on its old release"

    # one more reboot, the offer still retained: said again, not fetched, still the old fw
    dev.kill()
    mark = len(seen.on("/state"))
    dev = kit.door_from_tree()
    dev.expect(r"ABBOOT a normal", timeout=15)
    dev.expect(r"READY", timeout=15)
    wait_until(lambda: any(json.loads(p).get("update", {}).get("state") == "rolled_back"
                           and json.loads(p)["update"].get("fw") == release for p in seen.on("/state")[mark:]),
               15, what="the rollback reported again")
    time.sleep(13)  # past the settle window (10 s) and the download's wait for it (12 s)
    assert not dev.matching(r"FETCH|UPDATE switched")
    assert len(kit.relay.requests()) == asked
    born = [decode("state", p) for p in seen.on("/state")[mark:]]
    assert born and all(b.fw == rig.RUNNING for b in born if b.online), "the door stays on its old release"

    # a new offer id for the same release: ops' call, taken
    offer(pub, kit.offer(release))
    dev.expect(r"FETCH scanner-0.3.2 to b", timeout=20)
    wait_until(lambda: len(kit.relay.requests()) > asked, 15, what="the new offer fetched")
    dev.kill()


# ------------------------------------------------------------------ safe mode

def test_a_boot_looping_door_takes_from_safe_mode_the_update_that_fixes_it(tmp_path, broker, pub, sim, collect):
    kit = rig.Kit(tmp_path, broker.port, sim.port, safe_boots=2)
    try:
        seen = collect(rig.topic("state"))
        release, _ = kit.release("0.3.2")  # built from the good slot, before it is broken
        looping = rig.compile_app("import sys\nsys.exit(75)\n", tmp_path / "loop.mpy")  # dies at once, every boot
        (kit.tree / "a" / "app_main.mpy").write_bytes(looping)
        for _ in range(2):
            assert kit.door_from_tree().wait(15) == 75
        dev = kit.door_from_tree()
        dev.expect(r"ABBOOT a safe 3$", timeout=15)
        dev.expect(r"SAFE scanner 3$")
        wait_until(lambda: (updates(seen) or [None])[-1] == {"state": "safe_mode", "why": "3 fast boots in a row"},
                   15, what="safe mode in the door's state")
        offer(pub, kit.offer(release))
        dev.expect(r"UPDATE switched scanner-0.3.2", timeout=30)
        assert dev.wait(20) == 75
        dev = kit.door_from_tree()
        dev.expect(r"ABBOOT b trial 1", timeout=15)
        dev.expect(r"READY", timeout=20)
        dev.expect(r"UPDATE committed b", timeout=30)
        assert door(sim, kit.ticket(1)) == "green"
        steps = [u["state"] for u in updates(seen) if u]
        assert steps[steps.index("safe_mode"):][-3:] == ["downloading", "trial", "committed"], steps
        dev.kill()
    finally:
        kit.close()


# ------------------------------------------------------------------ the heap

def test_a_door_downloading_in_its_real_64_kb_heap_keeps_scanning_and_switches_or_says_memory_ran_out(
        tmp_path, broker, pub, sim):
    """In the heap the firmware has (64 KB, the ROMFS run as the heap tests run it), every scan is answered
    while the door downloads. The download mostly completes there (no fault on the way), but not always:
    at ~56 KB live it was near the heap's end, and one clean-clone CI run in four ran out of memory on a
    368-byte allocation (~52 KB live now: docs/updates.md). Until the budget test below passes, the door must then say so in its state and
    keep scanning, never crash or go quiet."""
    kit = rig.Kit(tmp_path, broker.port, sim.port, rate=12 * 1024)
    try:
        release, _size = kit.release("0.3.2")
        dev = kit.door_from_rom()
        dev.expect(r"READY", timeout=15)
        sim.wait_connected(1)
        t0 = time.monotonic()
        scan_until(dev, sim, kit, 0, lambda: time.monotonic() - t0 > 11, pace=0.2)  # past the settle window
        offer(pub, kit.offer(release))
        during = scan_until(dev, sim, kit, 1000, lambda: dev.matching(r"UPDATE switched"), pace=0.2,
                            failure_ends=True)
        assert during > 0
        failed = dev.matching(r"UPDATE failed (.*)")
        if failed:
            assert "memory allocation failed" in failed[0].group(1), failed[0].group(0)
            assert door(sim, kit.ticket(1000 + during + 1)) == "green", "the door scans on after running out of memory"
            assert not dev.matching(r"UPDATE switched")
        else:
            assert dev.matching(r"FETCHED \d+ \d+ 0")  # no fault on the way: not a retry that got through
    finally:
        kit.close()


def test_a_door_downloading_while_scanning_stays_within_its_heap_budget(tmp_path, broker, pub, sim):
    """The heap as the scanner's heap test counts it (ROMFS image; less the image and the names a frozen
    build keeps in flash), while it downloads and scans, in the firmware's real 64 KB heap (where the
    download completes: the test above): the assertion is the budget, on the live peak. The crowd holds
    a ticket up every 0.2 s, as bench.update_device's does (a door's real pace is slower: scanned flat
    out, the door's own traffic alone moves its samples by several KB), and the offer comes once the
    boot's settle window (10 s) is over, as at a door that has been up a while."""
    # paced so that the download spans several of the door's heap samples (MEM: every 2 s)
    kit = rig.Kit(tmp_path, broker.port, sim.port, rate=6 * 1024)
    try:
        release, _size = kit.release("0.3.2")
        image = kit.image()
        dev = kit.door_from_rom()
        dev.expect(r"READY", timeout=15)
        sim.wait_connected(1)
        t0 = time.monotonic()
        scan_until(dev, sim, kit, 0, lambda: time.monotonic() - t0 > 11, pace=0.2)
        mark = len(dev.lines)
        offer(pub, kit.offer(release))
        during = scan_until(dev, sim, kit, 1000, lambda: dev.matching(r"UPDATE switched"), pace=0.2)
        assert during > 0
        off = image.stat().st_size + rom_names_bytes("scanner", image)
        mem = [(i, int(ln.split()[1]) - off) for i, ln in enumerate(list(dev.lines)) if ln.startswith("MEM ")]
        idle = max(a for i, a in mem if i < mark)
        peak = max(a for _i, a in mem)
        print(f"\nscanner downloading while scanning: live heap peak {peak} B, idle before the offer {idle} B "
              f"(budget {rig.PEAK_TARGET})")
        assert peak <= rig.PEAK_TARGET, f"the door's heap peaked at {peak} B while it downloaded"
    finally:
        kit.close()
