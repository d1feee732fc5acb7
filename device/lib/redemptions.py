# The scanner's redemption log: which tickets of an event this scanner has admitted, and when.
#
# On flash: one append-only file per event, fixed 28-byte text records
#     "<ticket id, space-padded to 16> <Unix seconds, 10 digits>\n"
# written and flushed before the green light, so a record survives a reset or a power cut.
# A torn last record (power lost mid-write) is completed with filler on open and ignored.
#
# In RAM: an open-addressing hash table of 16-bit fingerprints, 2 bytes per slot, as many whole
# 1 KB pages as keep it at most 3/4 full: 5,000 tickets -> 7,168 slots -> 14 KB (2.9 B/ticket),
# instead of ~60 B/ticket for a set of bytes objects (and of the 16 KB a power-of-two table takes:
# it would round 1,000 tickets up to 4 pages where 3 do). A ticket never admitted is answered
# from RAM alone (a stray fingerprint match, ~1 in 16,000 lookups at that load, costs a file
# scan); a ticket already admitted costs one sequential read of the file to confirm it and
# to find the first scan's time (5,000 records = 140 KB). The file is the truth: the table
# is rebuilt from it at start and whenever it has to grow. The table is kept in 1 KB pages,
# so it fits in a heap too fragmented for one 16 KB block.
import gc
from hashlib import sha256

from micropython import const

_ID = const(16)
_REC = const(28)
_CHUNK_RECS = const(16)
_PAGE_BITS = const(9)  # the table is pages of 512 slots (1 KB): no 16 KB block needed in a fragmented heap
_PAGE_MASK = const(511)
_MIN_SLOTS = const(512)
_SPACE = const(32)
_NL = const(10)


def _pad_into(buf, ticket_id):
    if isinstance(ticket_id, str):
        ticket_id = ticket_id.encode()
    n = len(ticket_id)
    if not 0 < n <= _ID:
        raise ValueError("ticket id must be 1..16 bytes")
    for i in range(_ID):
        buf[i] = ticket_id[i] if i < n else _SPACE


def _slots_for(n):
    """Slots for n tickets at most 3/4 full, in whole pages of 512."""
    return max((n * 4 + 3 * _MIN_SLOTS - 1) // (3 * _MIN_SLOTS), 1) << _PAGE_BITS


def _valid_record(b, off):
    if b[off + _ID] != _SPACE or b[off + _REC - 1] != _NL or b[off] == _SPACE:
        return False
    for i in range(off + _ID + 1, off + _REC - 1):
        if not 48 <= b[i] <= 57:
            return False
    return True


class Redemptions:
    """Ticket ids admitted at one event, on flash; ``capacity`` presizes the table (tickets expected)."""

    def __init__(self, path, capacity=0):
        self.path = path
        self.count = 0  # records indexed
        self._pad = bytearray(_ID)
        self._rec = bytearray(_REC)
        self._table = None
        size = self._repair()
        self._slots = _slots_for(max(capacity, size // _REC))
        self._rebuild()
        self._f = open(path, "ab")

    # ---- public

    def lookup(self, ticket_id):
        """Unix time of this ticket's first admission here, or None if it was never admitted."""
        _pad_into(self._pad, ticket_id)
        slot, fp = self._hash(self._pad)
        pages = self._table
        n = self._slots
        while True:
            page = pages[slot >> _PAGE_BITS]
            i = (slot & _PAGE_MASK) << 1
            v = (page[i] << 8) | page[i + 1]
            if v == 0:
                return None
            if v == fp:
                return self._find(self._pad)  # one scan settles it, whatever else is in the chain
            slot += 1
            if slot == n:
                slot = 0

    def admit(self, ticket_id, when):
        """Record an admission (flushed to flash before returning). The caller checks lookup() first."""
        _pad_into(self._pad, ticket_id)
        rec = self._rec
        rec[:_ID] = self._pad
        rec[_ID] = _SPACE
        rec[_ID + 1:_REC - 1] = b"%010d" % int(when)
        rec[_REC - 1] = _NL
        self._f.write(rec)
        self._f.flush()
        self._insert(self._pad)
        if self.count * 4 > self._slots * 3:
            self._slots <<= 1  # doubled, not a page more: a rebuild reads the whole log
            self._rebuild()

    def close(self):
        self._f.close()

    @property
    def table_bytes(self):
        return len(self._table) << (_PAGE_BITS + 1)

    # ---- internals

    def _hash(self, padded):
        d = sha256(padded).digest()
        fp = (d[4] << 8) | d[5]
        return ((d[0] << 16) | (d[1] << 8) | d[2]) % self._slots, fp or 1

    def _insert(self, padded):
        slot, fp = self._hash(padded)
        pages = self._table
        n = self._slots
        while True:
            page = pages[slot >> _PAGE_BITS]
            i = (slot & _PAGE_MASK) << 1
            if not (page[i] or page[i + 1]):
                break
            slot += 1
            if slot == n:
                slot = 0
        page[i] = fp >> 8
        page[i + 1] = fp & 0xFF
        self.count += 1

    def _repair(self):
        """Complete a torn last record with filler (it will not parse); return the file size."""
        try:
            f = open(self.path, "rb")
        except OSError:
            return 0
        size = f.seek(0, 2)
        f.close()
        torn = size % _REC
        if torn:
            with open(self.path, "ab") as f:
                f.write(b" " * (_REC - torn - 1) + b"\n")
            size += _REC - torn
        return size

    def _records(self):
        """Yield (a view of the chunk read, offset) for each valid record in the file."""
        try:
            f = open(self.path, "rb")
        except OSError:
            return
        chunk = bytearray(_REC * _CHUNK_RECS)  # for this pass only: nothing of 448 B resident between scans
        mv = memoryview(chunk)
        try:
            while True:
                n = f.readinto(mv)
                if not n:
                    return
                for off in range(0, n - _REC + 1, _REC):
                    if _valid_record(chunk, off):
                        yield mv, off
        finally:
            f.close()

    def _rebuild(self):
        self._table = None
        gc.collect()
        self._table = [bytearray(2 << _PAGE_BITS) for _ in range(self._slots >> _PAGE_BITS)]
        self.count = 0
        for mv, off in self._records():
            self._insert(mv[off:off + _ID])

    def _find(self, padded):
        """The first admission time recorded for this padded id, by one pass over the file."""
        try:
            f = open(self.path, "rb")
        except OSError:
            return None
        chunk = bytearray(_REC * _CHUNK_RECS)  # (a ticket seen before: rare, and a refusal can afford it)
        mv = memoryview(chunk)
        try:
            while True:
                n = f.readinto(mv)
                if not n:
                    return None
                pos = chunk.find(padded, 0, n)  # the search runs in C; records are aligned in a chunk
                while pos >= 0:
                    if pos % _REC == 0 and _valid_record(chunk, pos):
                        return int(bytes(chunk[pos + _ID + 1:pos + _REC - 1]))
                    pos = chunk.find(padded, pos + 1, n)
        finally:
            f.close()


class Revocations:
    """Ticket ids refused by config, packed sorted 16 bytes apiece (no object per id)."""

    def __init__(self, ids=()):
        pad = bytearray(_ID)
        packed = []
        for tid in ids:
            _pad_into(pad, tid)
            packed.append(bytes(pad))
        packed.sort()
        self._packed = b"".join(packed)
        self._n = len(packed)
        self._pad = pad

    def __len__(self):
        return self._n

    def __contains__(self, ticket_id):
        _pad_into(self._pad, ticket_id)
        key = bytes(self._pad)
        lo, hi = 0, self._n
        while lo < hi:
            mid = (lo + hi) // 2
            here = self._packed[mid * _ID:(mid + 1) * _ID]
            if here == key:
                return True
            if here < key:
                lo = mid + 1
            else:
                hi = mid
        return False
