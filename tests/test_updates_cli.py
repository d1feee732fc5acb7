"""`popkit release upload`, `popkit rollout ...` and `popkit kit hold|unhold` (popkit/updates_cli.py)
against a real fleet API over HTTP (uvicorn), with the tokens of real users: ops do it all, a crew
holds its own kit and nothing else, and a refusal prints the fleet's reason and exits 1."""

from __future__ import annotations

import socket
import threading

import pytest

from fleet.api.app import create_app
from fleet.auth.testing import token_as
from fleet.settings import FleetSettings
from fleet.store import Store
from kits.manifest import parse_manifest
from kits.release import new_private_key, public_key_of
from popkit.cli import main
from tests.conftest import wait_until
from tests.test_updates_api import bundle, kit_toml


@pytest.fixture
def fleet(tmp_path):
    import uvicorn

    store = Store.open(f"sqlite:///{tmp_path / 'fleet.db'}")
    store.registry.register_kit(parse_manifest(kit_toml("alpha", 3)))
    store.registry.register_kit(parse_manifest(kit_toml("beta", 1)))
    pem = new_private_key()
    (tmp_path / "release.pub").write_text(public_key_of(pem).hex() + "\n")
    app = create_app(store, settings=FleetSettings(release_pubkey=str(tmp_path / "release.pub"),
                                                   release_dir=str(tmp_path / "releases")))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, what="uvicorn up")
    yield type("F", (), dict(app=app, store=store, url=f"http://127.0.0.1:{port}", pem=pem, tmp=tmp_path))
    server.should_exit = True
    thread.join(10)
    store.close()


def popkit(fleet, capsys, *argv: str) -> tuple[int, str, str]:
    code = main([*argv, "--fleet", fleet.url])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_ops_upload_start_pause_resume_show_and_abort_a_rollout(fleet, capsys, monkeypatch):
    monkeypatch.setenv("POPKIT_TOKEN", token_as(fleet.app, "ops-olga", "ops"))
    folder = bundle(fleet)
    code, out, _ = popkit(fleet, capsys, "release", "upload", str(folder))
    assert code == 0 and out.startswith("release scanner-0.4.0 uploaded: 2 files")
    code, _, err = popkit(fleet, capsys, "release", "upload", str(folder))
    assert code == 1 and "409" in err and "exists" in err  # the fleet's reason, as it said it
    code, out, _ = popkit(fleet, capsys, "rollout", "start", "scanner-0.4.0", "--kit", "alpha", "--groups", "1,100%",
                          "--error-threshold", "0.5", "--rate", "5")
    assert code == 0 and out.startswith("rollout 1: scanner-0.4.0 running")
    assert "group 1 (1): 0/1 committed" in out and "group 2 (100%): 0/2 committed" in out
    got = fleet.app.state.store.updates.rollout(1)
    assert (got.target.kits, got.groups, got.error_threshold, got.rate_per_min) == (("alpha",), ("1", "100%"), 0.5, 5)
    code, out, _ = popkit(fleet, capsys, "rollout", "pause", "1", "--reason", "checking the canary")
    assert code == 0 and "paused (by ops-olga: checking the canary)" in out
    assert popkit(fleet, capsys, "rollout", "resume", "1")[0] == 0
    code, out, _ = popkit(fleet, capsys, "rollout", "show")
    assert code == 0 and out.startswith("rollout 1: scanner-0.4.0 running, groups 1,100%, by ops-olga")
    code, out, _ = popkit(fleet, capsys, "rollout", "show", "1")
    assert code == 0 and "alpha-scanner-0" in out and "alpha-scanner-2" in out
    assert popkit(fleet, capsys, "rollout", "abort", "1")[1].startswith("rollout 1: scanner-0.4.0 aborted")
    code, _, err = popkit(fleet, capsys, "rollout", "resume", "1")
    assert code == 1 and "409" in err and "aborted" in err
    code, _, err = popkit(fleet, capsys, "release", "upload", str(fleet.tmp / "nothing-here"))
    assert code == 1 and "not a bundle" in err


def test_a_crew_holds_and_unholds_its_own_kit_only(fleet, capsys, monkeypatch):
    monkeypatch.setenv("POPKIT_TOKEN", token_as(fleet.app, "crew-a", "crew", kits=["alpha"]))
    code, out, _ = popkit(fleet, capsys, "kit", "hold", "alpha", "--reason", "load-in")
    assert code == 0 and out.startswith("kit alpha held by crew-a: load-in")
    assert fleet.store.updates.holds()["alpha"]["reason"] == "load-in"
    code, _, err = popkit(fleet, capsys, "kit", "hold", "beta")
    assert code == 1 and "404" in err  # not theirs: answered as for no such kit
    assert popkit(fleet, capsys, "kit", "unhold", "alpha")[1].strip() == "kit alpha: hold lifted"
    assert popkit(fleet, capsys, "kit", "unhold", "alpha")[1].strip() == "kit alpha was not held"
    code, _, err = popkit(fleet, capsys, "rollout", "show")
    assert code == 1 and "403" in err  # rollouts are for ops
    monkeypatch.delenv("POPKIT_TOKEN")
    code, _, err = popkit(fleet, capsys, "kit", "hold", "alpha")
    assert code == 1 and "POPKIT_TOKEN" in err
