"""Event keys that come at run time (verdict.Gate.load_keys), in the real MicroPython.

What the crew sees: a scanner flashed with no key for tonight's event admits its tickets once the
key arrives; a key's window is kept (too early: not_yet_valid); a key whose window is over leaves
the scanner with its redemption log, and is never loaded again from a stale config.
"""

from __future__ import annotations

import json
from pathlib import Path

from kits.tickets import EventKey, issue
from tests.device.test_ticket_firmware import DURING, T0, T1, device_json


def key_spec(key: EventKey, not_before: int = 0, expires: int = 0) -> dict:
    return {"event": key.event, "key": key.secret.hex(), "not_before": not_before, "expires": expires}


GATE = """
import json, os, verdict
gate = verdict.Gate({"events": []}, '.')
def ls():
    return sorted(n for n in os.listdir('.') if n.startswith('redeemed-'))
for line in open('in.txt'):
    op = json.loads(line)
    if op[0] == 'keys':
        print(json.dumps([gate.load_keys(op[1], op[2]), sorted(n.decode() for n in gate._events)]))
    elif op[0] == 'drop':
        print(json.dumps([gate.drop_expired(op[1]), ls()]))
    else:
        print(json.dumps(gate.decide(op[1], op[2])[0]))
"""


def test_a_key_from_config_admits_its_event_and_a_new_key_replaces_it(tmp_path: Path):
    key, rotated = EventKey.generate("FEST25"), EventKey("FEST25", EventKey.generate("FEST25").secret)
    t1 = issue(key, "FEST25", "A1", "GA", T0, T1)
    t2 = issue(rotated, "FEST25", "A2", "GA", T0, T1)
    ops = [["scan", t1, DURING],  # no key yet: another event's ticket, as far as this door knows
           ["keys", [key_spec(key, T0, T1 + 3600)], DURING],
           ["scan", t1, DURING],
           ["keys", [key_spec(key, T0, T1 + 3600)], DURING],  # the same key again changes nothing
           ["keys", [key_spec(rotated, T0, T1 + 3600)], DURING],
           ["scan", t2, DURING],
           ["scan", t1, DURING],  # the old key's tickets no longer verify
           ["scan", issue(rotated, "FEST25", "A3", "GA", T0 - 7200, T1), T0 - 60]]  # before the key's window
    got = device_json(GATE, tmp_path, [json.dumps(o) for o in ops])
    assert got == ["wrong_event", [1, ["FEST25"]], "admitted", [0, ["FEST25"]], [1, ["FEST25"]], "admitted",
                   "bad_signature", "not_yet_valid"]


def test_an_expired_key_is_dropped_with_its_redemptions_and_never_loaded_again(tmp_path: Path):
    old, new = EventKey.generate("FEST24"), EventKey.generate("FEST25")
    ops = [["keys", [key_spec(old, 0, T1), key_spec(new, 0, T1 + 86400)], DURING],
           ["scan", issue(old, "FEST24", "B1", "GA", T0, T1), DURING],
           ["scan", issue(new, "FEST25", "C1", "GA", T0, T1), DURING],
           ["drop", DURING],  # nothing is over yet
           ["drop", T1],  # FEST24's key is over: gone, and its log with it
           ["keys", [key_spec(old, 0, T1)], T1 + 5],  # a stale config still listing it: not loaded
           ["scan", issue(old, "FEST24", "B2", "GA", T0, T1 + 7200), T1 + 10]]
    got = device_json(GATE, tmp_path, [json.dumps(o) for o in ops])
    assert got == [[2, ["FEST24", "FEST25"]], "admitted", "admitted",
                   [[], ["redeemed-FEST24.log", "redeemed-FEST25.log"]],
                   [["FEST24"], ["redeemed-FEST25.log"]],
                   [0, ["FEST25"]], "wrong_event"]
