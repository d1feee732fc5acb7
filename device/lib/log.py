# log.py: the firmware's whole logging system, one function gated by one level.
#
#   from log import log
#   _WARN = const(2)                  # levels: 1 error, 2 warn, 3 info, 4 debug
#   log(_WARN, "mqtt", "lost: %r", e)
#   import log as L; L.level = 4      # show everything (a device in a venue keeps 2)
#
# Lines go to stdout (the UART/REPL on a board) as "<level> <tag>: <text>".
# Arguments are only formatted when the line is shown, but the call still
# builds a tuple: keep it off hot paths, or test `L.level` first there.

level = 2


def log(lv, tag, fmt, *args):
    if lv <= level:
        print("-EWID"[lv], tag + ":", (fmt % args) if args else fmt)
