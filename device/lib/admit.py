# The checks a release passes before the spare A/B slot takes a byte of it, and the slot's opening
# (update.Stage, docs/updates.md "A/B slots and safe mode on the ESP32").
#
# Heap: a module of its own so that none of it is resident while the files arrive: update.Stage
# imports it to open the slot and drops it from sys.modules at once (in a ROMFS run each function and
# each string constant over 10 characters is a heap object for as long as its module is loaded).
import json
import os
import sys
from binascii import unhexlify
from hashlib import sha256

from update import Refused, _hash, _size, entries


def _wipe(d):
    try:
        names = os.listdir(d)
    except OSError:
        os.mkdir(d)
        return
    for n in names:
        p = d + "/" + n
        try:
            os.remove(p)
        except OSError:  # a folder
            _wipe(p)
            os.rmdir(p)


def admit(manifest, tag, cfg, running, rollback, buf):
    """(the spare slot, its manifest.json), opened on the release (see update.Stage): its tag, role,
    ABI, version and room checked, the slot resumed (the same manifest there) or cleared."""
    import abboot  # the boot stage's, at the flash's root (not in a ROMFS or frozen run)
    from hmac256 import HMAC256, compare_digest

    if "abboot" in sys.modules:  # dropped again at once (heap: a download holds the rest); switch() takes it back
        del sys.modules["abboot"]
    key = cfg.get("update_key")
    if not key:
        raise Refused("no update_key in the device config (popkit kit provision)")
    if isinstance(tag, str):
        tag = unhexlify(tag)
    hm = HMAC256(unhexlify(key))
    named = isinstance(manifest, str)
    if named:  # HMAC-SHA256 (RFC 2104) over the file, through HMAC256's pads
        h = _hash(manifest, sha256(hm._ipad), buf)
        h2 = sha256(hm._opad)
        h2.update(h.digest())
        mac = h2.digest()
        size = _size(manifest)
        del h, h2
    else:
        mac = hm.digest(manifest)
        size = len(manifest)
    del hm
    if not compare_digest(mac, tag):
        raise Refused("bad tag: the manifest is not what the kit's agent vouched for")
    # checked an entry at a time, none kept (the slot's manifest.json is the table)
    m = e = {}  # type: dict
    for e in entries(manifest, True) if named else json.loads(manifest)["files"] + [json.loads(manifest)]:
        if isinstance(e, dict):
            if "format" in e:  # the manifest's own fields, after its files
                m = e
                continue
            e = (e["path"], e["size"], e["sha256"])  # type: ignore[assignment]  # (a manifest given as bytes: an entry as parsed)
        if ".." in e[0] or e[0].startswith("/") or len(e[2]) != 64:
            raise Refused("bad entry " + e[0])
    del e
    role = running.split("-")[0]
    if m.get("role") != role:
        raise Refused("wrong role: %s, this device is a %s" % (m.get("role"), role))
    if m.get("mpy_abi") != sys.implementation._mpy:
        raise Refused("mpy ABI %s, this firmware runs %d" % (m.get("mpy_abi"), sys.implementation._mpy))
    v = [tuple(int(x) for x in r.split("-")[-1].split(".")) for r in (m["version"], running)]
    if v[0] <= v[1] and not rollback:
        raise Refused("version %s is not newer than the running %s" % (m["version"], running))
    t = abboot.trial()
    if t and t[0] == abboot.current():
        raise Refused("a trial is under way: the spare slot holds the last good app")
    slot = abboot.other(abboot.current())
    total = m["total_size"]
    del m, v
    mine = slot + "/manifest.json"
    resume = _size(mine) == size
    if resume:
        if named:
            resume = _hash(mine, sha256(), buf).digest() == _hash(manifest, sha256(), buf).digest()
        else:
            with open(mine, "rb") as f:
                resume = f.read() == manifest
    if not resume:
        _wipe(slot)
        if named:
            os.rename(manifest, mine)
        else:
            with open(mine, "wb") as f:
                f.write(manifest)
    elif named:
        os.remove(manifest)
    have = 0
    for p, n, _s in entries(mine, False):
        have += min(max(_size(slot + "/" + p), 0), n)
    try:
        f = os.statvfs("/" if sys.platform == "esp32" else ".")
        f = f[0] * f[4]
    except (OSError, AttributeError):
        f = 1 << 30
    if total - have + 4096 > f:
        raise Refused("too big: %d bytes, %d free on flash" % (total - have, f))
    return slot, mine
