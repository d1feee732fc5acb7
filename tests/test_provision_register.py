"""`popkit kit provision --fleet URL` registers the kit with the fleet, as ops, through the API."""

from __future__ import annotations

import socket
import threading

import httpx

from fleet.api.app import create_app
from fleet.auth.testing import token_as
from fleet.store import Store
from popkit.cli import main
from tests.conftest import DEMO_KIT, wait_until


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_provisioning_registers_the_kit_with_the_fleet_as_ops_only(tmp_path, monkeypatch, capsys):
    import uvicorn

    store = Store.open(f"sqlite:///{tmp_path / 'fleet.db'}")
    app = create_app(store)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    fleet = f"http://127.0.0.1:{port}"
    args = ["kit", "provision", str(DEMO_KIT), "--out", str(tmp_path / "p"), "--fleet", fleet]
    try:
        wait_until(lambda: server.started, what="uvicorn up")
        monkeypatch.delenv("POPKIT_TOKEN", raising=False)
        assert main(args) == 3
        assert "POPKIT_TOKEN" in capsys.readouterr().err

        monkeypatch.setenv("POPKIT_TOKEN", token_as(app, "crew-1", "crew", kits=["demo"]))
        assert main(args) == 3  # a crew may run its kit, not register kits
        assert "refused kit 'demo': HTTP 403" in capsys.readouterr().err

        ops = token_as(app, "ops-1", "ops")
        assert httpx.get(f"{fleet}/api/v1/kits/demo", headers={"Authorization": f"Bearer {ops}"}).status_code == 404
        monkeypatch.setenv("POPKIT_TOKEN", ops)
        assert main(args) == 0
        out = capsys.readouterr().out
        assert f"registered with the fleet at {fleet}: kit 'demo', 5 devices" in out
        kit = httpx.get(f"{fleet}/api/v1/kits/demo", headers={"Authorization": f"Bearer {ops}"}).json()
        assert kit["id"] == "demo" and kit["devices_total"] == 5
        assert main(["kit", "provision", str(DEMO_KIT), "--out", str(tmp_path / "p"), "--fleet",
                     "http://127.0.0.1:9"]) == 3
        assert "could not be reached" in capsys.readouterr().err
    finally:
        server.should_exit = True
        thread.join(10)
        store.close()
