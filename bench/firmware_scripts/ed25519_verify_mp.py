# Ed25519 signature verification (RFC 8032) in pure MicroPython, with a pure SHA-512 (the ESP32's
# hashlib has no sha512). For measuring only (bench/ed25519_verify.py): it is not constant-time, not
# reviewed, and never shipped to a device; the devices check a per-device HMAC instead (docs/updates.md).
#
# Fair to Ed25519: extended coordinates, one joint (Straus-Shamir) double-scalar multiplication,
# R compared by its encoding (no square root for it), field elements as MicroPython big ints.
import gc
import sys
import time

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = (-121665 * pow(121666, P - 2, P)) % P
D2 = (2 * D) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)
_M64 = 0xFFFFFFFFFFFFFFFF

_K = (
    0x428a2f98d728ae22, 0x7137449123ef65cd, 0xb5c0fbcfec4d3b2f, 0xe9b5dba58189dbbc, 0x3956c25bf348b538,
    0x59f111f1b605d019, 0x923f82a4af194f9b, 0xab1c5ed5da6d8118, 0xd807aa98a3030242, 0x12835b0145706fbe,
    0x243185be4ee4b28c, 0x550c7dc3d5ffb4e2, 0x72be5d74f27b896f, 0x80deb1fe3b1696b1, 0x9bdc06a725c71235,
    0xc19bf174cf692694, 0xe49b69c19ef14ad2, 0xefbe4786384f25e3, 0x0fc19dc68b8cd5b5, 0x240ca1cc77ac9c65,
    0x2de92c6f592b0275, 0x4a7484aa6ea6e483, 0x5cb0a9dcbd41fbd4, 0x76f988da831153b5, 0x983e5152ee66dfab,
    0xa831c66d2db43210, 0xb00327c898fb213f, 0xbf597fc7beef0ee4, 0xc6e00bf33da88fc2, 0xd5a79147930aa725,
    0x06ca6351e003826f, 0x142929670a0e6e70, 0x27b70a8546d22ffc, 0x2e1b21385c26c926, 0x4d2c6dfc5ac42aed,
    0x53380d139d95b3df, 0x650a73548baf63de, 0x766a0abb3c77b2a8, 0x81c2c92e47edaee6, 0x92722c851482353b,
    0xa2bfe8a14cf10364, 0xa81a664bbc423001, 0xc24b8b70d0f89791, 0xc76c51a30654be30, 0xd192e819d6ef5218,
    0xd69906245565a910, 0xf40e35855771202a, 0x106aa07032bbd1b8, 0x19a4c116b8d2d0c8, 0x1e376c085141ab53,
    0x2748774cdf8eeb99, 0x34b0bcb5e19b48a8, 0x391c0cb3c5c95a63, 0x4ed8aa4ae3418acb, 0x5b9cca4f7763e373,
    0x682e6ff3d6b2b8a3, 0x748f82ee5defb2fc, 0x78a5636f43172f60, 0x84c87814a1f0ab72, 0x8cc702081a6439ec,
    0x90befffa23631e28, 0xa4506cebde82bde9, 0xbef9a3f7b2c67915, 0xc67178f2e372532b, 0xca273eceea26619c,
    0xd186b8c721c0c207, 0xeada7dd6cde0eb1e, 0xf57d4f7fee6ed178, 0x06f067aa72176fba, 0x0a637dc5a2c898a6,
    0x113f9804bef90dae, 0x1b710b35131c471b, 0x28db77f523047d84, 0x32caab7b40c72493, 0x3c9ebe0a15c9bebc,
    0x431d67c49c100d4c, 0x4cc5d4becb3e42b6, 0x597f299cfc657e2a, 0x5fcb6fab3ad6faec, 0x6c44198c4a475817)
_H0 = (0x6a09e667f3bcc908, 0xbb67ae8584caa73b, 0x3c6ef372fe94f82b, 0xa54ff53a5f1d36f1,
       0x510e527fade682d1, 0x9b05688c2b3e6c1f, 0x1f83d9abfb41bd6b, 0x5be0cd19137e2179)


def _rotr(x, n):
    return ((x >> n) | (x << (64 - n))) & _M64


def sha512(msg):
    h = list(_H0)
    n = len(msg)
    tail = bytes(msg[n - n % 128:]) + b"\x80" + bytes((111 - n) % 128) + (n * 8).to_bytes(16, "big")
    w = [0] * 80
    for chunk in (msg, tail):
        end = len(chunk) - len(chunk) % 128 if chunk is msg else len(chunk)
        for off in range(0, end, 128):
            for i in range(16):
                w[i] = int.from_bytes(chunk[off + 8 * i:off + 8 * i + 8], "big")
            for i in range(16, 80):
                a, b = w[i - 15], w[i - 2]
                s0 = _rotr(a, 1) ^ _rotr(a, 8) ^ (a >> 7)
                s1 = _rotr(b, 19) ^ _rotr(b, 61) ^ (b >> 6)
                w[i] = (w[i - 16] + s0 + w[i - 7] + s1) & _M64
            a, b, c, d, e, f, g, hh = h
            for i in range(80):
                t1 = (hh + (_rotr(e, 14) ^ _rotr(e, 18) ^ _rotr(e, 41)) + ((e & f) ^ (~e & g)) + _K[i] + w[i]) & _M64
                t2 = ((_rotr(a, 28) ^ _rotr(a, 34) ^ _rotr(a, 39)) + ((a & b) ^ (a & c) ^ (b & c))) & _M64
                hh, g, f, e, d, c, b, a = g, f, e, (d + t1) & _M64, c, b, a, (t1 + t2) & _M64
            h = [(x + y) & _M64 for x, y in zip(h, (a, b, c, d, e, f, g, hh))]
    return b"".join(x.to_bytes(8, "big") for x in h)


def _add(p1, p2):
    x1, y1, z1, t1 = p1
    x2, y2, z2, t2 = p2
    a = (y1 - x1) * (y2 - x2) % P
    b = (y1 + x1) * (y2 + x2) % P
    c = t1 * D2 * t2 % P
    dd = 2 * z1 * z2 % P
    e, f, g, h = b - a, dd - c, dd + c, b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _double(p1):
    x1, y1, z1, _ = p1
    a = x1 * x1 % P
    b = y1 * y1 % P
    c = 2 * z1 * z1 % P
    h = a + b
    e = h - (x1 + y1) * (x1 + y1) % P
    g = a - b
    f = c + g
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _decode(s):
    y = int.from_bytes(s, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    if y >= P:
        return None
    x2 = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * SQRT_M1 % P
    if (x * x - x2) % P:
        return None
    if x & 1 != sign:
        if x == 0:
            return None
        x = P - x
    return (x, y, 1, x * y % P)


def _encode(pt):
    x, y, z, _ = pt
    zi = pow(z, P - 2, P)
    x, y = x * zi % P, y * zi % P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


_BY = 4 * pow(5, P - 2, P) % P
BASE = _decode(_BY.to_bytes(32, "little"))


def verify(pub, msg, sig):
    if len(sig) != 64 or len(pub) != 32:
        return False
    a = _decode(pub)
    s = int.from_bytes(sig[32:], "little")
    if a is None or s >= L:
        return False
    k = int.from_bytes(sha512(sig[:32] + pub + msg), "little") % L
    # [s]B - [k]A, both scalars in one pass: -A is (P - x, y, z, P - t)
    neg_a = (P - a[0], a[1], a[2], P - a[3])
    both = _add(BASE, neg_a)
    acc = (0, 1, 1, 0)
    for i in range(255, -1, -1):
        acc = _double(acc)
        sb, kb = (s >> i) & 1, (k >> i) & 1
        if sb and kb:
            acc = _add(acc, both)
        elif sb:
            acc = _add(acc, BASE)
        elif kb:
            acc = _add(acc, neg_a)
    return _encode(acc) == sig[:32]


def main():
    # argv: the vector file (pub 32 | sig 64 | message), repetitions, mode ("time"; "verify": one
    # verify only, for the smallest heap it fits in; "load": nothing verified, the floor under that)
    path, reps, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    with open(path, "rb") as f:
        data = f.read()
    pub, sig, msg = data[:32], data[32:96], data[96:]
    if mode == "verify":
        print('{"ok": %s}' % ("true" if verify(pub, msg, sig) else "false"))
        return
    if mode == "load":  # the floor: this module and the vector loaded, nothing verified
        print('{"ok": true}')
        return
    gc.collect()
    before = gc.mem_alloc()
    t = time.ticks_us()
    for _ in range(reps):
        ok = verify(pub, msg, sig)
    verify_us = time.ticks_diff(time.ticks_us(), t) // reps
    bad = bytearray(sig)
    bad[5] ^= 1
    refused = not verify(pub, msg, bytes(bad))
    t = time.ticks_us()
    sha512(msg)
    sha_us = time.ticks_diff(time.ticks_us(), t)
    from hmac256 import HMAC256  # device/lib/hmac256.py, what the device runs

    key = HMAC256(bytes(range(32)))
    t = time.ticks_us()
    for _ in range(20):
        key.digest(msg)
    hmac_us = time.ticks_diff(time.ticks_us(), t) // 20
    print('{"ok": %s, "refused_bad": %s, "verify_us": %d, "sha512_us": %d, "hmac_us": %d, "msg_bytes": %d, '
          '"heap_before": %d}' % ("true" if ok else "false", "true" if refused else "false", verify_us, sha_us,
                                  hmac_us, len(msg), before))


main()
