"""Children that die with their supervisor: a process started through ``popen`` here gets SIGTERM
when the process that started it dies, however it dies (SIGKILL, the OOM killer, a closed terminal).

Why a wrapper and not ``preexec_fn``: the demo starts parts while its threads run (the consoles'
pumps, the crowd at the door), and ``preexec_fn`` runs Python between fork and exec, where a lock
another thread held at fork can deadlock the child. The wrapper is this file, run by path as
``python -I -S lifeline.py PARENT -- CMD...`` (standard library only: a few ms): it sets Linux's
``PR_SET_PDEATHSIG`` and execs CMD, which keeps the setting (and its pid, so the supervisor's
signals and ``wait`` reach CMD itself).

Rules that shape it:
- The kernel sends the signal when the *thread* that forked the child ends, not the process. So
  ``popen`` refuses to start a child from any thread but the main one unless the caller says the
  thread lives as long as the children (``long_lived=True``).
- The supervisor may die between the fork and the ``prctl``: the wrapper then sees a parent that is
  no longer PARENT and does not start CMD at all.
- Elsewhere than Linux there is no such call: the command runs unwrapped, and the demo's record
  (popkit/demo_record.py) finds what is left at the next start.
"""

from __future__ import annotations

import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
SUPPORTED = sys.platform.startswith("linux")
ORPHANED_EXIT = 70  # the wrapper's exit when its supervisor died before CMD could start (EX_SOFTWARE)


def command(argv: list[str], parent: int | None = None) -> list[str]:
    """``argv`` wrapped so it dies with ``parent`` (default: this process)."""
    if not SUPPORTED:
        return list(argv)
    return [sys.executable, "-I", "-S", os.path.abspath(__file__), str(parent or os.getpid()), "--", *argv]


def popen(argv: list[str], long_lived: bool = False, **kwargs):
    """``subprocess.Popen(argv, **kwargs)``, its child bound to this process's life (see above)."""
    import subprocess
    import threading

    if not long_lived and threading.current_thread() is not threading.main_thread():
        raise RuntimeError(f"{argv[0]}: a child bound to its parent must be started from the main thread "
                           f"(PR_SET_PDEATHSIG fires when the starting thread {threading.current_thread().name!r} ends)")
    return subprocess.Popen(command(argv), **kwargs)


def _die_with_parent(parent: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    if os.getppid() != parent:  # it died before the prctl: the signal will never come
        sys.stderr.write(f"lifeline: supervisor {parent} is gone; not starting the command\n")
        os._exit(ORPHANED_EXIT)


def main(args: list[str]) -> None:
    if len(args) < 3 or args[1] != "--" or not args[0].isdigit():
        sys.stderr.write("usage: lifeline.py PARENT_PID -- COMMAND [ARG...]\n")
        os._exit(2)
    _die_with_parent(int(args[0]))
    cmd = args[2:]
    try:
        os.execvp(cmd[0], cmd)
    except OSError as exc:
        sys.stderr.write(f"lifeline: cannot run {cmd[0]}: {exc.strerror}\n")
        os._exit(127)


if __name__ == "__main__":
    main(sys.argv[1:])
