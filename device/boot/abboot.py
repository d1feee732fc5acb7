# The A/B boot stage (docs/updates.md, "A/B slots and safe mode on the ESP32"): which app slot boots,
# and whether as a trial, in safe mode or as usual. It sits at the flash's root beside main.py and,
# like main.py, is never replaced by an update: whatever a slot holds, this still decides.
#
# State at the root, each file replaced whole by rename (a power cut leaves the old or the new):
#   slot     "a" | "b": the pointer; the slot not named is the spare (a new release goes there)
#   trial    "<slot> <boots> [why]": that slot is on trial, not yet committed; the other one is the
#            last good slot. A trial naming a slot the pointer does not (a switch cut before its
#            rename) is stale and dropped.
#   boots    fast boots in a row (the app clears it once it has been up for FAST_S); on the ESP32 also
#            in RTC memory, which survives a reset but not a power cut
#   abwhy    the last rollback's reason, for the app to report (removed once reported)
#   tried    "<slot>\n<update.failed path>\n<offer id>": the offer that put that slot on trial (fetch.py,
#            at the switch, before the marker). A rollback away from that slot writes the id and its
#            reason into the link's update.failed before it moves the pointer: the offer, still retained
#            on the door's topic, is answered rolled_back and never fetched again (link.py)
#   fwtrial  a new MicroPython firmware image boots on trial (ESP32 only: boards/esp32/fwimage.py);
#            the bootloader rolls it back unless commit() marks it valid
#   upmode   a lighting controller's offer, taken from its update mode (device/lib/upmode.py, in the
#            slot): the boot is mode "update" while it is there; a trial or safe mode drops it (a trial:
#            the switch it led to happened; safe mode takes offers itself)
# main.py calls boot() and drops this module before importing the app: none of it stays in the
# app's heap. The app imports it again only for settle(), during its first seconds or its trial.
import os

FAST_S = 10  # a boot whose app ran less than this is a fast reboot
GIVE_UP = 5  # a trial not healthy for trial_s in a row within GIVE_UP * trial_s resets (and rolls back)
_RTC_TAG = b"PKAB"


def _read(name):
    try:
        with open(name) as f:
            return f.read().strip()
    except OSError:
        return None


def _put(name, text):
    with open(name + ".tmp", "w") as f:
        f.write(text)
    os.rename(name + ".tmp", name)  # littlefs and POSIX: atomic over the old file


def _rm(name):
    try:
        os.remove(name)
    except OSError:
        pass


def _rtc():
    try:
        import machine

        return machine.RTC()
    except (ImportError, AttributeError, TypeError):
        return None  # the unix port: the file alone


def boots(n=None):
    """The fast-boot counter; set it to ``n`` when given. RTC memory first (it survives a reset on
    the ESP32 and costs no flash write to read), the file after a power cut."""
    rtc = _rtc()
    if n is None:
        m = rtc.memory() if rtc else b""
        if m[:4] == _RTC_TAG:
            return int(m[4:])
        try:
            return int(_read("boots") or 0)
        except ValueError:
            return 0
    if rtc:
        rtc.memory(_RTC_TAG + str(n).encode())
    _put("boots", str(n))
    return n


def other(slot):
    return "b" if slot == "a" else "a"


def current():
    s = _read("slot")
    return s if s in ("a", "b") else "a"


def trial():
    """(slot, boots, why) of the trial under way, or None."""
    t = _read("trial")
    if not t:
        return None
    p = t.split(" ", 2)
    try:
        return p[0], int(p[1]), p[2] if len(p) > 2 else ""
    except (IndexError, ValueError):
        return p[0], 1, "bad trial marker"


def switch(slot, tried=None):
    """Point at ``slot`` on trial: the marker first, then the pointer by rename. Cut before the
    rename, the marker is stale (it names the slot the pointer does not) and the old slot boots.
    ``tried``: (update.failed's path, the offer's id), kept for a rollback of this slot (rollback())."""
    if tried:
        _put("tried", "%s\n%s\n%s" % (slot, tried[0], tried[1]))
    else:
        _rm("tried")  # none of an earlier switch's left to name this slot's offer
    _put("trial", slot + " 0")
    _put("slot", slot)
    boots(0)


def commit():
    """The trial slot is now the last good one: one removal, atomic. A new firmware image on trial
    (device/boards/esp32/fwimage.py: "fwtrial") is marked valid for the bootloader too."""
    _rm("trial")
    if _read("fwtrial") is not None:
        try:
            from esp32 import Partition

            Partition.mark_app_valid_cancel_rollback()
        except (ImportError, OSError):
            pass
        _rm("fwtrial")


def rollback(why):
    """Back to the other slot, as the good one (ops asked, or a trial failed). The offer that installed
    this slot (``tried``) is failed first: cut before the pointer moves, the next boot does it again."""
    cur = current()
    why = "rolled_back " + cur + ": " + why
    t = (_read("tried") or "").split("\n")
    if len(t) == 3 and t[0] == cur:
        _put(t[1], t[2] + "\n" + why)  # link.py's update.failed: "<offer id>\n<why>"
    _put("abwhy", why)
    _put("slot", other(cur))  # the pointer first: cut here, the stale trial marker is dropped at boot
    _rm("trial")
    _rm("tried")


def _has(name):
    try:
        os.stat(name)
        return True
    except OSError:
        return False


def boot(safe_boots=5):
    """(slot folder, mode) for this boot: mode "trial", "safe", "update" or "normal"."""
    cur = current()
    t = trial()
    mode = "normal"
    if t and t[0] != cur:
        _rm("trial")  # a switch cut before its rename: the old slot still is the good one
    elif t and t[1] >= 1:  # booted on trial before and never committed: it failed
        rollback(t[2] or "reset before the healthy window")
        cur = current()
    elif t:
        _put("trial", cur + " 1")
        mode = "trial"
    n = boots(boots() + 1)
    if mode == "normal" and n > safe_boots:
        mode = "safe"
    if _has("upmode"):
        if mode == "normal" and (_has(cur + "/upmode.mpy") or _has(cur + "/upmode.py")):
            mode = "update"  # upmode.py bounds its own boots
        else:
            _rm("upmode")  # (a slot without the update mode: the marker cannot be taken)
    print("ABBOOT", cur, mode, n)
    return cur, mode


def failed(exc):
    """The app raised out of its import: note why (a trial then rolls back for it) and reset."""
    import sys

    why = "app raised " + repr(exc)[:80]
    sys.print_exception(exc)
    print("ABBOOT failed", why)
    _give_up(why)


def _give_up(why):
    """End a trial that failed: its reason in the marker, then a reset (the next boot rolls back)."""
    import sys

    t = trial()
    if t and t[0] == current():
        _put("trial", "%s %d %s" % (t[0], max(t[1], 1), why))
    try:
        import machine

        machine.reset()
    except (ImportError, AttributeError):
        sys.exit(75)  # the unix board's reset (board.RESET_EXIT): its supervisor starts it again


async def settle(healthy, trial_s=60, fast_s=FAST_S):
    """The app's part, from its first seconds: clear the fast-boot count once up ``fast_s``; on trial,
    commit after ``healthy()`` held true for ``trial_s`` in a row. Returns what to report:
    ("committed", ""), ("rolled_back", why) of the boot that rolled back, or None."""
    import asyncio

    if _read("slot") is None:
        return None  # not booted through this stage (a frozen or ROMFS run): nothing to keep
    why = _read("abwhy")
    await asyncio.sleep_ms(fast_s * 1000)
    boots(0)
    if why:
        _rm("abwhy")
        return "rolled_back", why
    if trial() is None and _read("fwtrial") is None:
        return None
    ok = 0
    waited = 0
    while ok < trial_s:
        ok = ok + 1 if healthy() else 0
        waited += 1
        if waited > GIVE_UP * trial_s:  # a release that cannot show it works is not kept waiting for
            print("ABBOOT trial never healthy")
            _give_up("never healthy in %d s" % waited)
        await asyncio.sleep_ms(1000)
    commit()
    return "committed", current()
