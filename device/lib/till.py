# till.py: the scanner's till mode. A product label scanned goes to the kit's till (the agent) as a
# question; the till's answer lights the lamp. Nothing here is a check-in.
#
# * Imported only while the scanner is in till mode (apps/scanner/main.py, Scanner.till): a door's
#   heap never holds this module, and switch(..., None) drops it again when the config says door.
# * A scanned line is a product code (kits/retail/sku.py) or it is refused here, with no question
#   asked: 13 digits with their EAN-13 check digit, or A-Z/0-9 segments joined by single dashes with
#   at least one letter, at most _CODE_MAX long (the till takes letters in either case, as typed). A
#   ticket's QR (PK1:...), a URL, a damaged code: red and the long low beep, "bad_code", never
#   admitted, never sent. Which codes the catalog knows (and the label width's limit on SKUs) is the
#   till's to say.
# * Question: TillScan {"id", "code", "till", "ts"} on popkit/v1/<kit>/<device>/till, QoS 0, never
#   retained, asked again every _RESEND_MS until answered (the till answers a repeat without adding);
#   answer: TillAnswer on .../tilled (kits/contract.py). An answer whose id is not the
#   question's is a late one for an earlier scan and is ignored, as the hub's claims are (link.py).
# * Lamp and beeper, the door's patterns: the line added -> green, one short high beep; the till says
#   no (unknown SKU, bad code, no open till, order full) -> red, one long low beep, the order as it
#   was; no answer within _ANSWER_MS, or no link to ask over -> red, two short low beeps: scan again.
# * The tilled topic rides the link's kit-level subscriptions (Link._kit_subs: subscribed again on
#   every new session, handed to us as bytes), added at the first scan and taken out on leaving.
# * Per scan: the question is written into one buffer kept for the mode's life; the answer is a
#   small dict, let go once read.
#
# Output line (tests, serial console): TILL <ok|reason|no_answer> <sku|-> <qty|-> <question id>
import asyncio
import json
import sys

from micropython import const

import board
import ticket

_ANSWER_MS = const(1500)  # the longest wait for the till's answer before "scan again"
_RESEND_MS = const(500)  # the question again, if no answer yet (the same bytes)
_CODE_MAX = const(32)  # kits.contract.TILL_CODE_MAX
_ID_MAX = const(63)  # a station is an Id (kits.contract.ID_PATTERN)
_BUF = const(160)  # the question at its longest: code 32, station 63, two ints, the keys


def product(line):
    """True when the scanned bytes can be a product code (see the top of this file)."""
    n = len(line)
    if not 0 < n <= _CODE_MAX:
        return False
    letter = dash = False
    s = 0
    for i in range(n):
        c = line[i]
        if 65 <= c <= 90 or 97 <= c <= 122:
            letter = True
        elif c == 45:
            if dash or i == 0 or i == n - 1:  # one dash between two segments, no more
                return False
        elif not 48 <= c <= 57:
            return False
        elif i < 12:
            s += (c - 48) * (3 if i & 1 else 1)
        dash = c == 45
    if letter:
        return True
    # no letter: 13 digits, no dash, the last the EAN-13 check digit of the others
    return n == 13 and 45 not in line and (10 - s % 10) % 10 == line[12] - 48


# (Few functions and methods: imported from ROMFS each one takes heap, as the app's do.)
class Till:
    def __init__(self, scanner):
        self._s = scanner
        self.station = b"main"
        self._buf = bytearray(_BUF)
        from pkmqtt import Flag  # (the app's, loaded already: here, so till.py alone imports light)

        self._ev = Flag()
        self._id = 0
        self._ans = None
        self._sub = None  # the link's kit-level entry for .../tilled, once added
        self._conns = 0  # the link's session in which we last subscribed it ourselves

    def __call__(self, m, retained):
        """The till's answer (a kit-level handler of the link's: bad JSON is counted there)."""
        r = json.loads(m)
        if r["id"] == self._id:
            self._ans = r
            self._ev.set()

    async def _ask(self, line, ts):
        lk = self._s.link
        pre = lk._t_state[:-5]  # popkit/v1/<kit>/<device>/
        c = lk.mqtt
        if self._sub is None:  # the first question: from now on the link subscribes it at every new session
            self._sub = (pre + b"tilled", 0, self)
            lk._kit_subs += (self._sub,)
        if self._conns != c.conns:  # this session began before that, or a subscribe cut short by the timeout
            await c.subscribe(self._sub[0], 0)
            self._conns = c.conns
        b = self._buf
        i = 0
        for part in (b'{"id":', str(self._id).encode(), b',"code":"', line, b'","till":"', self.station, b'","ts":',
                     str(ts).encode(), b"}"):
            b[i:i + len(part)] = part
            i += len(part)
        t = pre + b"till"
        q = memoryview(b)[:i]
        ev = self._ev
        # QoS 0 both ways: a question or an answer lost (or late) is asked again, the same id and ts,
        # which the till answers once (agent/till/scans.py keeps its recent answers): a line is never
        # added twice for one scan, and "scan again" means the till truly did not hear.
        while True:
            await c.publish(t, q, False, 0)
            for _ in range(_RESEND_MS // 10):
                if ev.is_set():
                    return
                await asyncio.sleep_ms(10)

    async def scan(self, line):
        s = self._s
        if not product(line):  # a ticket, a URL, a damaged code: the till is not asked
            print("TILL bad_code - - -")
            s.signal("")  # "": no verdict of the door's, so the refusal's lamp and beep
            return
        r = None
        if s.link.mqtt.up.is_set():  # no link: no answer can come, say "scan again" now
            self._id = (self._id + 1) & 0x7FFFFFFF
            self._ans = None
            self._ev.clear()
            try:
                await asyncio.wait_for_ms(self._ask(line, board.epoch_ms()), _ANSWER_MS)
                r = self._ans
            except asyncio.TimeoutError:
                pass
        self._ans = None
        if r is None:
            print("TILL no_answer - -", self._id)
            s.signal(ticket.MALFORMED)
        else:
            ok = r.get("ok")
            print("TILL", "ok" if ok else r.get("reason") or "refused", r.get("sku") or "-", r.get("qty") or "-",
                  self._id)
            s.signal(ticket.ADMITTED if ok else "")


def switch(scanner, station):
    """The scanner's Till for ``station`` (str), or None for door mode: this module is then dropped.
    A station that is no kits.contract Id (it goes into the question's JSON as it is) is refused."""
    t = scanner.till
    if station is not None:
        ok = type(station) is str and 0 < len(station) <= _ID_MAX and station[0] not in "_-"
        for c in station if ok else "":
            ok = ok and (c.isdigit() or "a" <= c <= "z" or c in "_-")
        if not ok:
            print("MODE bad till station", repr(station))
            station = None
    if station is None:
        if t is not None and t._sub is not None:
            lk = scanner.link
            subs = []
            for k in lk._kit_subs:
                if k is not t._sub:
                    subs.append(k)
            lk._kit_subs = tuple(subs)
        sys.modules.pop("till", None)
        print("MODE door")
        return None
    if t is None:
        t = Till(scanner)
    t.station = station.encode()
    print("MODE till", station)
    return t
