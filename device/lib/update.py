# Staging a release into the spare A/B slot (docs/updates.md, "A/B slots and safe mode on the ESP32").
#
# The agent hands the device a release's manifest.json with a tag, HMAC-SHA256 under this device's
# own update_key (its config, from provisioning): the agent checked the release key's Ed25519
# signature, the device checks the tag (hmac256.py), before anything is written. Then each file
# arrives in chunks, appended to the spare slot and hashed as it comes (sha256, one context: the
# heap stays the same whatever the size); a chunk must start where the file ends (resume after a
# cut: ask from its size; a repeat or a gap is refused). switch() re-reads and checks every file,
# then points the boot stage (abboot.py) at the slot, on trial.
# Heap: no table of files is kept. The manifest sits in the slot on flash and is read back an entry at
# a time whenever one is needed (entries(), next(), check()); only the file being received is held:
# its path, size, digest and hash context. Few functions: in a ROMFS run each one is a heap object
# (and no default arguments: a function with some is a bigger object, beside a tuple of them).
# The checks before the slot is opened (tag, role, ABI, version, room) are admit.py's, imported by
# Stage() and dropped again: none of their code or text is on the heap while the files arrive.
# Imported only while an update is under way; the app drops it after (none of it stays resident).
import json
import os
import sys
from binascii import unhexlify
from hashlib import sha256

from micropython import const

_BUF = const(512)  # the read buffer for hashing a file on flash
# The refusals of a file, one string split at use (_WHY.split("|")[_AT]): in a ROMFS run each string
# constant over 10 characters is a heap object for as long as the module is loaded.
_WHY = ("not in the manifest: %s|chunk of %s at %d, the file holds %d: %s chunk|%s longer than its %d bytes|"
        "hash mismatch: %s|%s: %d of %d bytes")
_UNKNOWN = const(0)
_AT = const(1)
_OVER = const(2)
_HASH = const(3)
_SIZE = const(4)


# A release this device will not take; str() says why (reported to the fleet). The running slot is
# never touched by a refusal. ValueError itself, not a class of its own: in a ROMFS run a class is a
# type object and a dict on the heap for as long as the module is loaded.
Refused = ValueError


def _size(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return -1


def _hash(path, h, buf):
    """``h`` updated with the file's bytes, read ``buf`` at a time."""
    with open(path, "rb") as f:
        while True:
            n = f.readinto(buf)
            if not n:
                return h
            h.update(memoryview(buf)[:n])


def entries(path, top):
    """(path, size, sha256 hex) of each entry of a manifest's "files" list, parsed alone, then
    (``top``) the manifest's other fields as a dict (its "files" left empty): read from flash through
    a small buffer of its own (the caller's may be busy hashing meanwhile). Parsed whole, a role's
    manifest of 17 files takes ~7 KB of heap at once; one entry takes a few hundred bytes. A caller
    that stops early closes it (close()): its file is not left open until a collection."""
    buf = bytearray(64)
    top = bytearray() if top else None
    ent = bytearray()
    depth = 0
    instr = esc = False
    with open(path, "rb") as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            for i in range(n):
                c = buf[i]
                d = depth
                if instr:
                    if esc:
                        esc = False
                    elif c == 92:  # backslash
                        esc = True
                    elif c == 34:  # quote
                        instr = False
                elif c == 34:
                    instr = True
                elif c == 123 or c == 91:  # { [
                    depth += 1
                elif c == 125 or c == 93:  # } ]
                    depth -= 1
                if d >= 3 or depth >= 3:  # inside an entry of the list (the only list at the top level)
                    ent.append(c)
                    if depth == 2:  # its closing brace
                        e = json.loads(bytes(ent))
                        ent = bytearray()
                        yield e["path"], e["size"], e["sha256"]
                elif top is not None and (d <= 1 or depth <= 1):  # the top level, the list's brackets included
                    top.append(c)
    if top is not None:
        yield json.loads(bytes(top))


class Stage:
    def __init__(self, manifest, tag, cfg, running, rollback, buf):
        """Check the release (tag, role, ABI, version, room) and open the spare slot for it: a slot
        already holding this very manifest is resumed, anything else there is cleared.
        ``manifest``: manifest.json's bytes, or the name of a file holding them (the downloader's:
        hashed and parsed from flash, never whole in RAM; renamed into the slot). ``buf``: a buffer
        to read files through (the downloader lends its own: one buffer, not two), or None."""
        import admit  # the checks (admit.py): off the heap again before the first chunk arrives

        self._buf = buf = buf or bytearray(_BUF)
        self._cur = None  # [path, size, digest, sha256 context] of the file being received
        try:
            self.slot, self._man = admit.admit(manifest, tag, cfg, running, rollback, buf)
        finally:
            del sys.modules["admit"]

    def have(self, path):
        """Bytes of ``path`` already in the slot: where its download goes on from."""
        return max(_size(self.slot + "/" + path), 0)

    def next(self):
        """(path, bytes in the slot, size) of the first file not whole, made the one being received
        (begin), or None when every file is there."""
        g = entries(self._man, False)
        for p, n, s in g:
            k = self.have(p)
            if k < n:
                g.close()
                self.begin(p, n, s)
                return p, k, n
        return None

    def begin(self, path, size, sum):
        """Make ``path`` the file being received: its size and digest (looked up in the manifest when
        ``sum`` is None), its hash, a resumed file's bytes on flash hashed here, through the buffer. The
        downloader calls it while the buffer it lent is free (the chunk it writes then sits in it)."""
        c = self._cur
        if c is not None and c[0] == path:
            return
        if sum is None:
            g = entries(self._man, False)
            for p, n, s in g:
                if p == path:
                    size, sum = n, s
                    g.close()
                    break
            else:
                raise Refused(_WHY.split("|")[_UNKNOWN] % path)
        full = self.slot + "/" + path
        self._cur = [path, size, unhexlify(sum), _hash(full, sha256(), self._buf) if _size(full) > 0 else sha256()]

    def write(self, path, offset, data):
        """Append a chunk at ``offset`` of ``path``; True when that file is complete (and its hash
        matched). Refused: an unknown file, a chunk not at the file's end, a file over its size or
        with another hash (the bad file is removed, to be fetched again)."""
        self.begin(path, -1, None)
        c = self._cur  # type: list  # type: ignore[assignment]
        e = c[1]
        full = self.slot + "/" + path
        size = _size(full)
        if size < 0:
            size = 0
            d = self.slot
            for part in path.split("/")[:-1]:  # its folders
                d += "/" + part
                try:
                    os.mkdir(d)
                except OSError:
                    pass
        if offset != size:
            raise Refused(_WHY.split("|")[_AT] % (path, offset, size, "repeated" if offset < size else "missing a"))
        if size + len(data) > e:
            os.remove(full)
            raise Refused(_WHY.split("|")[_OVER] % (path, e))
        with open(full, "ab") as f:
            f.write(data)
        c[3].update(data)  # after the write: a write that failed leaves the hash as the file is
        if size + len(data) < e:
            return False
        self._cur = None
        if c[3].digest() != c[2]:
            os.remove(full)
            raise Refused(_WHY.split("|")[_HASH] % path)
        return True

    def check(self, p, size, sum):
        """File ``p`` there, at its ``size``, with its hash (``sum``: hex, the manifest's), read back
        from flash."""
        full = self.slot + "/" + p
        if _size(full) != size:
            raise Refused(_WHY.split("|")[_SIZE] % (p, max(_size(full), 0), size))
        if _hash(full, sha256(), self._buf).digest() != unhexlify(sum):
            os.remove(full)
            raise Refused(_WHY.split("|")[_HASH] % p)

    def switch(self, checked, tried):
        """Verified (``checked``: the caller just ran check() on every file, yielding between them),
        then the pointer moves (abboot.switch: atomic); the next boot is the trial. ``tried``:
        (update.failed's path, the offer's id), failed by the boot stage if this trial rolls back."""
        if not checked:
            for p, n, s in entries(self._man, False):
                self.check(p, n, s)
        import abboot

        abboot.switch(self.slot, tried)
        return self.slot
