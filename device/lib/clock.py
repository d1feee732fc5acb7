# clock.py: whether the device's time can be believed, and which kit time to take.
#
# * The board keeps the time (board.epoch_ms, set_epoch_ms) and knows where its own came from
#   (board.clock_source, a string: "synced" after internet NTP or on the unix port's host clock, "kit" for a
#   time given to it or kept from before this boot, None for none). A board clock that reads
#   before FLOOR_MS was never set, whatever the board says: an ESP32's RTC starts in 2000 at
#   power-up.
# * The kit's Pi is the kit's clock: its agent publishes popkit/v1/<kit>/time ({ts, src, synced},
#   QoS 0, never retained) every 10 s and at once on a device's birth; the link hands each one to
#   offer(). The first sets an unset clock ("synced" when the Pi's own clock is disciplined by NTP
#   or an RTC, else "kit"); later ones correct drift. A message that would move a set clock back
#   more than _BACK_MS or ahead more than _AHEAD_MS is refused (the link counts it: telemetry's
#   `clock_refused`): a stale message, or a Pi that lost its time, must not undo a good clock (a
#   ticket's window, a lighting schedule, a command's expiry all read it). The exception: a synced
#   Pi's time always replaces a "kit" one (the Pi just took NTP after running on its last known time).
# * A kit message that says its own time is not synced never overrides a synced clock.
#
# States (state.clock in the wire contract): "synced" | "kit" | "unset"; the link publishes the
# device's state again when it changes. Two functions and no object: every function and class a
# module defines costs an ESP32 heap bytes for as long as it runs.
from micropython import const

from log import log

FLOOR_MS = 1735689600000  # 2025-01-01T00:00Z: no firmware of this build ran before it (past a small int on 32 bits)
UNSET = "unset"
_BACK_MS = const(5000)  # a set clock is never moved back more than this
_AHEAD_MS = const(86400000)  # nor ahead more than a day
_SLEW_MS = const(1000)  # drift under this is left alone (the message's own trip is part of it)
_WARN = const(2)


def state(board):
    """The clock's state: "synced", "kit" or "unset" (a board time before FLOOR_MS)."""
    src = board.clock_source
    if src is None or board.epoch_ms() < FLOOR_MS:
        return UNSET
    return src


def offer(board, ts, synced):
    """The kit's time ``ts`` (epoch ms) and whether the Pi's own clock is disciplined. Returns 1
    when the clock's state changed (the device publishes its state again), 0 when the time was
    taken or left alone, -1 when it was refused (counted by the caller)."""
    if type(ts) is not int or ts < FLOOR_MS:
        log(_WARN, "clock", "refused a kit time before the build floor: %r", ts)
        return -1
    before = state(board)
    src = "synced" if synced else "kit"
    if before != UNSET:
        d = ts - board.epoch_ms()
        # A synced Pi (NTP or an RTC) is taken over a kit clock whatever the jump: after days on its
        # last known time, the uplink's first NTP sync moves the kit's time far ahead, rightly.
        if (d < -_BACK_MS or d > _AHEAD_MS) and not (synced and before == "kit"):
            log(_WARN, "clock", "refused a kit time %d ms from ours (%s): kept ours", d, before)
            return -1
        if before == "synced" and not synced:
            return 0  # our synced clock is better than a Pi on its last known time
        if -_SLEW_MS < d < _SLEW_MS and before == src:
            return 0
    board.set_epoch_ms(ts, src)
    return 1 if state(board) != before else 0
