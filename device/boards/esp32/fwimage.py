# A new MicroPython firmware image for the ESP32, through esp32.Partition's OTA slots (ota_0/ota_1):
# the firmware's own A/B, beside the app slots of device/boot/abboot.py (docs/updates.md, "A/B slots
# and safe mode on the ESP32"). Only when the interpreter itself must change (a new MicroPython, a new
# .mpy ABI); an app release never needs it. Imported only for such an update, dropped after.
#
# The image is written to the partition after the running one (get_next_update), one 4 KB block at a
# time as it arrives (writeblocks' first form erases each block first), hashed as it goes; finish()
# checks size and SHA-256, leaves abboot's "fwtrial" marker, then set_boot(): the bootloader boots it
# as "pending verify". The app's healthy window (abboot.settle -> abboot.commit) then calls
# Partition.mark_app_valid_cancel_rollback(); a reset before that, and the bootloader boots the old image again.
# Needs a build with CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE and an OTA partition table
# (ESP32_GENERIC-OTA); it cannot run in the unix port, so the tests compile-check and type-check it.
from binascii import unhexlify
from hashlib import sha256

from esp32 import Partition
from micropython import const

_BLOCK = const(4096)


class Refused(Exception):
    pass


class Image:
    def __init__(self, size, sha256_hex):
        """Open the next OTA partition for an image of ``size`` bytes with that SHA-256."""
        self.part = Partition(Partition.RUNNING).get_next_update()
        room = self.part.info()[3]
        if size > room:
            raise Refused("firmware image of %d bytes, the OTA partition holds %d" % (size, room))
        self.size = size
        self.want = unhexlify(sha256_hex)
        self.got = 0
        self.block = 0
        self.buf = bytearray(_BLOCK)
        self.n = 0
        self.h = sha256()

    def write(self, data):
        """The next bytes of the image, in order (a resumed download starts the image again: blocks
        cannot be appended to after a reset without reading them back)."""
        if self.got + len(data) > self.size:
            raise Refused("firmware image longer than its %d bytes" % self.size)
        self.h.update(data)
        self.got += len(data)
        mv = memoryview(data)
        while len(mv):
            k = min(_BLOCK - self.n, len(mv))
            self.buf[self.n:self.n + k] = mv[:k]
            self.n += k
            mv = mv[k:]
            if self.n == _BLOCK:
                self._flush()

    def _flush(self):
        for i in range(self.n, _BLOCK):
            self.buf[i] = 0xFF  # erased flash: the tail of the last block
        self.part.writeblocks(self.block, self.buf)
        self.block += 1
        self.n = 0

    def finish(self):
        """Check the whole image, then boot it next, on trial (abboot's "fwtrial" marker first: cut
        between the two, the old image boots and its next healthy window clears the marker)."""
        if self.got != self.size:
            raise Refused("firmware image: %d of %d bytes" % (self.got, self.size))
        if self.n:
            self._flush()
        if self.h.digest() != self.want:
            raise Refused("firmware image hash mismatch")
        import abboot

        abboot._put("fwtrial", "1")
        self.part.set_boot()

