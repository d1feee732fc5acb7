"""The interpreter the firmware tests run in is the real MicroPython, with the heap we budget for."""

from tests.device.mpy import run_mpy


def test_micropython_unix_port_runs_with_a_64k_heap():
    out = run_mpy("import sys, gc, hashlib; gc.collect(); print(sys.implementation.name, gc.mem_free() + gc.mem_alloc())")
    name, heap = out.stdout.split()
    assert name == "micropython"
    assert 60_000 <= int(heap) <= 66_000
