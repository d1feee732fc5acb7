"""The measurement behind "Trust on the ESP32" in docs/updates.md (bench/ed25519_verify.py): its
pure-MicroPython Ed25519 verifier takes a real signature and refuses a changed one, fits in the
suite's 64 KB heap, and the HMAC the device checks instead is far cheaper."""

from __future__ import annotations

from bench.ed25519_verify import HEAP, main


def test_ed25519_measurement_runs_and_holds_what_the_doc_says(capsys):
    r = main()  # raises SystemExit when the verifier accepts a bad signature or refuses a good one
    assert r["manifest_bytes"] == 2048
    assert 0 < r["verify_min_heap_kb"] * 1024 <= HEAP
    assert 0 < r["verify_working_heap_kb"] < r["verify_min_heap_kb"]
    assert r["unix_hmac_sha256_ms"] * 100 < r["unix_verify_ms"]
    assert r["esp32_verify_s"][0] < r["esp32_verify_s"][1] < r["esp32_verify_s"][2]
    assert capsys.readouterr().out.splitlines()[-1].startswith('{"bench": "ed25519_verify"')
