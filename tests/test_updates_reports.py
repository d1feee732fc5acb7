"""A device's A/B news reaches its rollout through ingest (kits/contract.py State.update, the ledger's
state hook, fleet/updates/store.py): written in the batch that stores the state, on real SQLite and
PostgreSQL. A state without news, safe mode, news of another release's slot and news from a session
older than the offer move nothing."""

from __future__ import annotations

from fleet.db import now_ms
from fleet.ledger.model import Batch
from kits.contract import decode
from tests.test_updates_api import upload, world  # noqa: F401  (the fixture, and a release uploaded by ops)


def state(update: str | None = None, fw: str = "scanner-0.4.0", ts: int | None = None):
    extra = f',"update":{update}' if update else ""
    return decode("state", f'{{"boot":"ab12cd34","seq":0,"ts":{ts or now_ms()},"online":true,"role":"scanner",'
                           f'"fw":"{fw}","reason":"birth"{extra}}}'.encode())


def test_a_state_saying_committed_moves_its_device_in_a_running_rollout(world):  # noqa: F811
    upload(world)
    rid = world.ops.post("/api/v1/rollouts", json={"release": "scanner-0.4.0", "kits": ["alpha"],
                                                   "groups": [1, "100%"]}).json()["id"]
    delivery, ledger = world.app.state.updates, world.store.ledger
    [canary] = delivery.step()
    dev = canary["device"]

    def device_state() -> tuple[str, str | None]:
        got = world.ops.get(f"/api/v1/rollouts/{rid}").json()
        return next((d["state"], d["reason"]) for d in got["device_updates"] if d["device_id"] == dev)

    ledger.write_batch(Batch(states=[(dev, state())]))  # no news: an older device, or nothing to say
    assert device_state() == ("offered", None)
    ledger.write_batch(Batch(states=[(dev, state('{"state":"safe_mode","why":"6 fast boots"}', "scanner-0.3.1"))]))
    assert device_state() == ("offered", None)  # safe mode is the device's state, not a step of its update
    # News of another release's slot (a state retained from before this offer) is not this update's.
    ledger.write_batch(Batch(states=[(dev, state('{"state":"committed","fw":"scanner-0.3.9"}'))]))
    assert device_state() == ("offered", None)
    # ... nor is news from a session begun well before the offer (a retained state of an earlier
    # update, with no fw to tell), where the device's clock is set; an unset clock's ts proves nothing.
    hour_ago = now_ms() - 3_600_000
    ledger.write_batch(Batch(states=[(dev, state('{"state":"rolled_back","why":"old"}', ts=hour_ago))]))
    assert device_state() == ("offered", None)
    ledger.write_batch(Batch(states=[(dev, state('{"state":"trial","fw":"scanner-0.4.0"}'))]))
    assert device_state() == ("trial", None)
    ledger.write_batch(Batch(states=[(dev, state('{"state":"committed","why":"b"}'))]))
    assert device_state() == ("committed", "b")
    # The rollout goes on to the next group, as with any other report.
    assert len(delivery.step()) == 3
    # A final state stays final: a later report of the same device changes nothing.
    ledger.write_batch(Batch(states=[(dev, state('{"state":"rolled_back","why":"never healthy in 300 s"}'))]))
    assert device_state() == ("committed", "b")
