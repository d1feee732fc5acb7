# Lines from a GM65/GM861-class scanner module on a UART (9600 8N1): each decoded code
# arrives as text ended by CR, or CR LF, depending on the module's setting.
#
# Policy, for the bytes a real UART delivers:
# - reads split anywhere: the partial line is kept until its terminator arrives;
# - CR, LF, or CR LF end a line; empty lines (the LF of CR LF) are skipped;
# - a non-printable byte (power-up noise, a framing error, a code carrying binary data)
#   throws away the line so far and counts it in ``garbage``; collecting restarts after it,
#   so noise before a scan does not cost the scan, and noise inside one leaves a fragment
#   that the ticket parser refuses as malformed (red light: scan again);
# - a line longer than the buffer is discarded whole, up to its terminator, and counted in
#   ``overlong`` (the buffer never grows);
# - drop_partial() discards a line the module never finished (call it after a quiet gap).
from micropython import const

MAX_LINE = const(128)  # a ticket is at most 79 characters
_CR = const(13)
_LF = const(10)


class LineAssembler:
    def __init__(self, max_line=MAX_LINE):
        self._buf = bytearray(max_line)
        self._n = 0
        self._over = False
        self.lines = 0  # lines delivered
        self.garbage = 0  # non-printable bytes seen (each one also drops the line so far)
        self.overlong = 0  # lines discarded for being longer than max_line
        self.dropped = 0  # unfinished lines thrown away by drop_partial()

    def feed(self, data, n=-1):
        """Take the first ``n`` bytes (all if n < 0) of ``data``; return the lines they complete, as bytes."""
        if n < 0:
            n = len(data)
        out = None
        buf = self._buf
        size = len(buf)
        for i in range(n):
            c = data[i]
            if c == _CR or c == _LF:
                if self._over:
                    self._over = False
                elif self._n:
                    if out is None:
                        out = []
                    out.append(bytes(buf[: self._n]))
                    self.lines += 1
                self._n = 0
            elif c < 32 or c > 126:
                self.garbage += 1
                self._n = 0
            elif self._over:
                pass
            elif self._n == size:
                self._over = True
                self.overlong += 1
                self._n = 0
            else:
                buf[self._n] = c
                self._n += 1
        return out or ()

    def drop_partial(self):
        """Forget an unfinished line (the module went quiet mid-line). True if there was one."""
        had = self._n > 0 or self._over
        if had:
            self.dropped += 1
        self._n = 0
        self._over = False
        return had
