# flashlog.py: the device's outbox on flash.
#
# Every telemetry/event/ack message is appended here before it is published,
# and leaves only when the fleet's receipt names its (boot, seq) (docs/protocol.md:
# the broker's PUBACK proves nothing durable). It survives a reboot or a kill at
# any point: a message may then be sent twice (the fleet deduplicates), never lost.
#
# Layout, all append-only: segment files "<n>.log" of up to `seg_records`
# records each, numbered upwards, and beside each an "<n>.ack" file with one
# byte per record index that a receipt (or the drop policy) has removed. A
# segment whose records are all removed is deleted. A segment left with a few
# live records (receipts came out of order, or the fleet keeps refusing one)
# is compacted once the log spans more segments than its live records need at
# a quarter full: its live records are copied to the head and it is deleted.
# So flash use follows what is unreceipted (at most about 4x, plus two
# segments), not what was ever sent.
#
# A record is self-contained, so compaction can move it and an old boot's
# message goes out again with its ORIGINAL boot, seq and ts (they are in the
# payload; boot and seq are also in the header, for receipts):
#
#   0      magic 0xA7
#   1      flags: bit 0 droppable (telemetry), bits 1-3 channel code
#   2      boot length B (<= 32)
#   3..6   seq, u32 big-endian
#   7..8   payload length P, u16 big-endian
#   9..    boot (B ASCII hex bytes), payload (P bytes), CRC-32 of all before it (4 bytes)
#
# A record cut short by a kill or a power cut fails the length or CRC check and
# ends its segment; a new boot never appends to an old segment.
#
# Bound and policy (as the agent's outbox): at most `cap` live records. When
# full, the oldest live telemetry is dropped and counted in `dropped` (the
# incoming telemetry itself if there is no older one); events and acks
# (check-ins) are never dropped: past the cap they are kept and counted in
# `over_cap`, and only a full flash (OSError ENOSPC from append) stops them.
#
# RAM does not depend on the log's size: the segment range is two integers,
# files are streamed record by record through one buffer, and no method keeps
# a file open across calls except the head it appends to. The buffer may be lent
# (a device's download takes it, link.py: _buf is None meanwhile): records are
# then written in parts and read into buffers of their own size, so the one who
# borrowed it finds it as it left it after every await.

import binascii
import os
import struct

from micropython import const

from log import log

_MAGIC = const(0xA7)
_HDR = const(9)
_MAX_BOOT = const(32)
_DROPPABLE = const(1)
_INFO = const(3)
_WARN = const(2)

CHANNELS = ("", "telemetry", "event", "ack")  # channel code (flags bits 1-3) -> name


class FlashLog:
    def __init__(self, root, cap=2000, seg_records=32, buf_size=512):
        if not 0 < seg_records <= 255:
            raise ValueError("seg_records")
        self.root = root
        self.cap = cap
        self.count = 0  # live (unreceipted) records
        self.dropped = 0  # telemetry dropped oldest-first since this boot
        self.over_cap = 0  # undroppable records kept past the cap since this boot
        self._segn = seg_records
        self._hdr = bytearray(_HDR)
        self._buf = bytearray(buf_size)  # type: bytearray | None  # (None: lent, see the module's text)
        self._acks = bytearray(seg_records)  # removed-flags of the segment at hand
        self._new = bytearray(seg_records)  # indexes removed by the operation at hand
        self._head = None  # the file this boot appends to: segment _hi
        self._head_n = 0
        # The reader (one segment streamed at a time) and the record it stands after.
        self._rf = None
        self._rsize = self._rpos = self._ridx = 0
        self.r_flags = self.r_seq = 0
        self.r_boot = self.r_pay = None
        self._rboot = self._rblen = 0
        try:
            os.mkdir(root)
        except OSError:
            pass
        # Segments that may exist: _lo.._hi (none when _lo > _hi).
        self._lo = 0
        self._hi = 0
        for e in os.ilistdir(root):
            name = e[0]
            if name.endswith(".log"):
                n = int(name[:-4])
                if not self._lo or n < self._lo:
                    self._lo = n
                if n > self._hi:
                    self._hi = n
            elif name.endswith(".ack") and not _exists(root + "/" + name[:-4] + ".log"):
                os.remove(root + "/" + name)  # its segment was deleted just before a reset
        if not self._lo:
            self._lo = 1
        self._drop_from = self._lo  # no live telemetry before this segment
        for n in range(self._lo, self._hi + 1):
            if self._open(n, 0, 0):
                removed = self._acks_of(n)
                while self._next(False):
                    pass
                self._rf.close()
                if self._ridx == removed:
                    self._delete(n)
                else:
                    self.count += self._ridx - removed
        log(_INFO, "flashlog", "%s: %d unreceipted", root, self.count)

    # ------------------------------------------------------------ writing

    def append(self, boot, seq, channel, payload, droppable):
        """Write one record (boot: bytes, channel: a CHANNELS name) and flush it to flash.
        Returns False when it was telemetry dropped at once by the cap policy."""
        if self.count >= self.cap and not self._make_room(droppable):
            return False
        self._write(boot, seq, (CHANNELS.index(channel) << 1) | (_DROPPABLE if droppable else 0), payload, True)
        self.count += 1
        return True

    def _write(self, boot, seq, flags, payload, one):
        if len(boot) > _MAX_BOOT or len(payload) > 0xFFFF:
            raise ValueError("record too large")
        if self._head is None or self._head_n >= self._segn:  # a new head segment
            if self._head is not None:
                self._head.close()
            self._hi += 1
            self._head = open(self._path(self._hi, ".log"), "ab")
            self._head_n = 0
        h = self._hdr
        h[0] = _MAGIC
        h[1] = flags
        h[2] = len(boot)
        struct.pack_into(">IH", h, 3, seq, len(payload))
        crc = binascii.crc32(payload, binascii.crc32(boot, binascii.crc32(h)))
        f = self._head
        b = self._buf
        n = _HDR + len(boot) + len(payload) + 4
        if one and b is not None and n <= len(b):  # one write: a kill cannot leave half a header
            b[0:_HDR] = h
            b[_HDR:_HDR + len(boot)] = boot
            i = _HDR + len(boot)
            b[i:i + len(payload)] = payload
            struct.pack_into(">I", b, i + len(payload), crc)
            f.write(memoryview(b)[:n])
        else:
            f.write(h)
            f.write(boot)
            f.write(payload)
            f.write(struct.pack(">I", crc))
        f.flush()
        self._head_n += 1

    def _make_room(self, incoming_droppable):
        """The log is at its cap: drop the oldest live telemetry. False if the incoming record
        should go instead (it is telemetry and no older telemetry is live)."""
        for n in range(max(self._lo, self._drop_from), self._hi + 1):
            if not self._open(n, 0, 0):
                continue
            removed = self._acks_of(n)
            k = -1
            while self._next(False):
                i = self._ridx - 1
                if k < 0 and not self._acks[i] and self.r_flags & _DROPPABLE:
                    k = i
            self._rf.close()
            if k >= 0:
                self._drop_from = n
                self._new[0] = k
                self._ack(n, 1)
                self._tidy(n, self._ridx - removed - 1)
                self.dropped += 1
                return True
        self._drop_from = self._hi  # telemetry appended from now on lands in the head or later
        if incoming_droppable:
            self.dropped += 1
            return False
        self.over_cap += 1
        return True

    # ------------------------------------------------------------ receipts

    def confirm(self, boot, ranges):
        """The fleet has committed these (boot, [[first, last], ...]): remove them.
        Returns how many records left the log."""
        if isinstance(boot, str):
            boot = boot.encode()
        want = 0
        for r in ranges:
            want += r[1] - r[0] + 1
        found = 0  # stop after the segment where every named seq was found (the usual case)
        removed = 0
        for n in range(self._lo, self._hi + 1):
            if found >= want:
                break
            if not self._open(n, 0, 0):
                continue
            gone = self._acks_of(n)
            k = 0
            while self._next(False):
                seq = self.r_seq
                for r in ranges:
                    if r[0] <= seq <= r[1]:
                        if self._boot() == boot:
                            found += 1
                            i = self._ridx - 1
                            if not self._acks[i]:
                                self._acks[i] = 1
                                self._new[k] = i
                                k += 1
                        break
            self._rf.close()
            if k:
                removed += k
                self._ack(n, k)
                self._tidy(n, self._ridx - gone - k)
        return removed

    def _ack(self, n, k):
        """Record the k indexes in _new as removed from segment n."""
        with open(self._path(n, ".ack"), "ab") as f:
            f.write(memoryview(self._new)[:k])
            f.flush()
        self.count -= k

    def _tidy(self, n, live):
        """Segment n has `live` records left: delete it when none; compact it when few, if the
        log spans more segments than its live records need at a quarter full (so a segment
        that in-order receipts are still working through is left alone)."""
        if live <= 0:
            self._delete(n)
        elif n != self._hi and live <= self._segn // 4 and self._hi - self._lo > 1 + self.count * 4 // self._segn:
            self._compact(n)

    def _compact(self, n):
        """Copy segment n's live records to the head, then delete it."""
        if not self._open(n, 0, 0):
            return
        self._acks_of(n)
        try:
            while self._next(True):
                if not self._acks[self._ridx - 1]:
                    # the payload is a view of the buffer _write assembles in: written apart
                    self._write(self.r_boot, self.r_seq, self.r_flags, self.r_pay, False)
        finally:
            self._rf.close()
        # Killed here: the records exist twice; both are sent, the fleet keeps one.
        self._delete(n)
        log(_INFO, "flashlog", "compacted segment %d", n)

    def _delete(self, n):
        if n == self._hi and self._head is not None:
            self._head.close()
            self._head = None
        for ext in (".log", ".ack"):
            try:
                os.remove(self._path(n, ext))
            except OSError:
                pass
        while self._lo <= self._hi and not _exists(self._path(self._lo, ".log")):
            self._lo += 1  # the low end moves up to the oldest segment that exists

    # ------------------------------------------------------------ reading, for the sender

    def read(self, cur, chans, msgs):
        """From cursor `cur` ([segment, index, offset]; [0, 0, 0] = the oldest record) on, put
        up to len(msgs) live records' channel codes in chans and payloads in msgs; advance
        the cursor past them. Returns how many."""
        k = 0
        want = len(msgs)
        if cur[0] < self._lo:
            cur[0], cur[1], cur[2] = self._lo, 0, 0
        while k < want and cur[0] <= self._hi:
            n = cur[0]
            if not self._open(n, cur[2], cur[1]):
                cur[0], cur[1], cur[2] = n + 1, 0, 0
                continue
            self._acks_of(n)
            while k < want and self._next(True):
                if not self._acks[self._ridx - 1]:
                    chans[k] = self.r_flags >> 1
                    msgs[k] = bytes(self.r_pay)
                    k += 1
            cur[1], cur[2] = self._ridx, self._rpos
            self._rf.close()
            if k < want:
                if n == self._hi:
                    break  # the head may still grow: stay on it
                cur[0], cur[1], cur[2] = n + 1, 0, 0  # an old segment (maybe torn at its end) is done
        return k

    def first(self):
        """Key (segment * 256 + index) of the oldest live record; -1 when the log is empty."""
        for n in range(self._lo, self._hi + 1):
            if self._open(n, 0, 0):
                self._acks_of(n)
                while self._next(False):
                    if not self._acks[self._ridx - 1]:
                        self._rf.close()
                        return n * 256 + self._ridx - 1
                self._rf.close()
        return -1

    def close(self):
        if self._head is not None:
            self._head.close()
            self._head = None

    # ------------------------------------------------------------ segment internals

    def _path(self, n, ext):
        return "%s/%d%s" % (self.root, n, ext)

    def _acks_of(self, n):
        """Load segment n's removed-flags into _acks; returns how many."""
        acks = self._acks
        for i in range(len(acks)):
            acks[i] = 0
        try:
            f = open(self._path(n, ".ack"), "rb")
        except OSError:
            return 0
        got = 0
        b = self._buf or bytearray(len(acks))  # (lent: a segment's ack file is about one byte a record)
        while True:
            m = f.readinto(b)
            if not m:
                break
            for j in range(m):
                i = b[j]
                if i < len(acks) and not acks[i]:
                    acks[i] = 1
                    got += 1
        f.close()
        return got

    def _boot(self):
        """The boot of the record _next(False) stepped over."""
        f = self._rf
        f.seek(self._rboot)
        b = f.read(self._rblen)
        f.seek(self._rpos)
        return b

    def _open(self, n, off, idx):
        try:
            f = open(self._path(n, ".log"), "rb")
        except OSError:
            return False
        self._rf = f
        self._rsize = f.seek(0, 2)
        f.seek(off)
        self._rpos = off
        self._ridx = idx
        return True

    def _next(self, want_payload):
        """Step to the next complete record: its fields in r_*, and with want_payload its
        payload (CRC checked) in r_pay. False at the end or at a torn record."""
        f = self._rf
        h = self._hdr
        pos = self._rpos
        if pos + _HDR > self._rsize or f.readinto(h) != _HDR or h[0] != _MAGIC:
            return False
        bl = h[2]
        seq, pl = struct.unpack_from(">IH", h, 3)
        end = pos + _HDR + bl + pl + 4
        if end > self._rsize:
            return False
        if want_payload:
            boot = f.read(bl)
            b = self._buf
            pb = memoryview(b)[:pl] if b is not None and pl <= len(b) else bytearray(pl)
            if f.readinto(pb) != pl:
                return False
            if struct.unpack(">I", f.read(4))[0] != binascii.crc32(pb, binascii.crc32(boot, binascii.crc32(h))):
                log(_WARN, "flashlog", "bad CRC at %d: the segment ends there", pos)
                return False
            self.r_pay = pb
            self.r_boot = boot
        else:  # the boot only on demand (boot()): receipts look at seq first
            self._rboot = pos + _HDR
            self._rblen = bl
            f.seek(end)
        self.r_flags = h[1]
        self.r_seq = seq
        self._rpos = end
        self._ridx += 1
        return True


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False
