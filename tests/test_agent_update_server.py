"""The agent's update cache and its kit-network server (agent/updates/), with real signed bundles
(kits.release), a real HTTP client over TCP and the server in its own event loop, as in the agent."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import os
import threading

import pytest

from agent.updates.cache import CacheError, UpdateCache
from agent.updates.keys import DeviceKeys
from agent.updates.server import UpdateServer, start_update_server
from agent.settings import AgentSettings
from kits.release import device_tag, new_private_key, public_key_of, write_bundle

DOOR = "door-1"
DOOR_KEY = bytes(range(32))
APP = os.urandom(40_000)  # bigger than a chunk: resumed in the middle
FILES = {"app_main.mpy": APP, "lib/scan.mpy": b"scan" * 100, "empty.mpy": b""}


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    priv = new_private_key()
    out = tmp_path_factory.mktemp("releases")
    folder = write_bundle(out, "scanner", "0.4.0", 6, FILES, priv, created_ms=1)
    return folder, public_key_of(priv), priv


@pytest.fixture
def keys_file(tmp_path):
    path = tmp_path / "update-keys.json"
    path.write_text(json.dumps({DOOR: DOOR_KEY.hex(), "door-2": "ab" * 32}))
    path.chmod(0o600)
    return path


class Loop:
    """An asyncio loop in a thread: the server runs as in the agent, the client blocks as a device."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def served(tmp_path, release, keys_file):
    folder, pub, _ = release
    cache = UpdateCache(tmp_path / "data" / "updates", pub)
    cache.add(folder)
    loop = Loop()
    server = loop.run(UpdateServer(cache, DeviceKeys(keys_file), "127.0.0.1", 0).start())
    yield server
    loop.run(server.close())
    loop.close()


def get(server, path, device=DOOR, headers=None, method="GET"):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    h = dict(headers or {})
    if device is not None:
        h["X-Popkit-Device"] = device
    conn.request(method, path, headers=h)
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r, body


BASE = "/updates/scanner-0.4.0"


def test_manifest_with_the_devices_own_tag(served, release):
    folder, _, _ = release
    manifest_json = (folder / "manifest.json").read_bytes()
    r, body = get(served, f"{BASE}/manifest.json")
    assert r.status == 200 and body == manifest_json
    assert r.getheader("X-Popkit-Tag") == device_tag(DOOR_KEY, manifest_json).hex()
    r2, _ = get(served, f"{BASE}/manifest.json", device="door-2")
    assert r2.getheader("X-Popkit-Tag") == device_tag(bytes.fromhex("ab" * 32), manifest_json).hex()
    assert r2.getheader("X-Popkit-Tag") != r.getheader("X-Popkit-Tag")  # one device's tag is useless to another
    assert served.served["manifest"] == 2


def test_download_in_ranges_resumes_and_hashes_match(served):
    got = bytearray()
    step = 4096
    while len(got) < len(APP):
        r, body = get(served, f"{BASE}/files/app_main.mpy", headers={"Range": f"bytes={len(got)}-{len(got) + step - 1}"})
        assert r.status == 206
        end = min(len(got) + step, len(APP)) - 1
        assert r.getheader("Content-Range") == f"bytes {len(got)}-{end}/{len(APP)}"
        got += body
        if len(got) == 3 * step:  # the connection dropped here: the device resumes from what it has
            r, body = get(served, f"{BASE}/files/app_main.mpy", headers={"Range": f"bytes={len(got)}-"})
            assert r.status == 206 and body == APP[len(got):]
    assert hashlib.sha256(got).digest() == hashlib.sha256(APP).digest()
    r, body = get(served, f"{BASE}/files/lib/scan.mpy")
    assert r.status == 200 and body == FILES["lib/scan.mpy"] and r.getheader("Accept-Ranges") == "bytes"
    r, body = get(served, f"{BASE}/files/app_main.mpy", method="HEAD")
    assert r.status == 200 and r.getheader("Content-Length") == str(len(APP)) and body == b""


@pytest.mark.parametrize("rng", [f"bytes={len(APP)}-", f"bytes={len(APP) + 5}-{len(APP) + 9}", "bytes=10-5",
                                 "bytes=0-1,5-6", "bytes=-100", "lines=1-2"])
def test_a_bad_range_is_416(served, rng):
    r, body = get(served, f"{BASE}/files/app_main.mpy", headers={"Range": rng})
    assert r.status == 416 and r.getheader("Content-Range") == f"bytes */{len(APP)}" and body == b""


def test_unknown_bundle_file_or_path_is_404(served):
    for path in ("/updates/scanner-9.9.9/manifest.json", f"{BASE}/files/nope.mpy", f"{BASE}/files/../manifest.sig",
                 f"{BASE}/manifest.sig", "/updates/.partial/manifest.json", "/", f"{BASE}/files/%2e%2e/manifest.sig"):
        r, _ = get(served, path)
        assert r.status == 404, path


def test_unknown_device_is_403_and_counted(served):
    for device in ("door-9", "door-9", None):
        r, body = get(served, f"{BASE}/manifest.json", device=device)
        assert r.status == 403 and r.getheader("X-Popkit-Tag") is None and body == b""
    r, _ = get(served, f"{BASE}/files/app_main.mpy", device="door-9", headers={"Range": "bytes=0-9"})
    assert r.status == 403
    assert served.refused == {"door-9": 3, "-": 1}


def test_keys_file_readable_by_others_serves_nobody(served, keys_file):
    keys_file.chmod(0o644)
    os.utime(keys_file, ns=(1, 1))  # a changed file is re-read
    r, _ = get(served, f"{BASE}/manifest.json")
    assert r.status == 403
    keys_file.chmod(0o600)
    os.utime(keys_file, ns=(2, 2))
    r, _ = get(served, f"{BASE}/manifest.json")
    assert r.status == 200


def test_only_get_and_junk_is_closed(served):
    r, _ = get(served, f"{BASE}/manifest.json", method="POST")
    assert r.status == 405
    import socket

    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as s:
        s.sendall(b"x" * 8000)  # no end of head within the limit: closed, nothing read into memory beyond it
        assert s.recv(100) == b""


# ---------------------------------------------------------------- the cache


def _fill_all(fill, folder, chunk=4096):
    for path, offset in fill.missing().items():
        data = (folder / "files" / path).read_bytes()
        while offset < len(data):
            offset = fill.write(path, offset, data[offset:offset + chunk])


def test_cache_resumes_a_fill_after_a_restart_and_refuses_wrong_offsets(tmp_path, release):
    folder, pub, _ = release
    mj, sig = (folder / "manifest.json").read_bytes(), (folder / "manifest.sig").read_bytes()
    cache = UpdateCache(tmp_path / "updates", pub)
    fill = cache.begin(mj, sig)
    assert fill.write("app_main.mpy", 0, APP[:5000]) == 5000
    with pytest.raises(CacheError, match="repeated"):
        fill.write("app_main.mpy", 1000, APP[1000:2000])
    with pytest.raises(CacheError, match="out of order"):
        fill.write("app_main.mpy", 6000, APP[6000:7000])
    with pytest.raises(CacheError, match="more than the manifest"):
        fill.write("lib/scan.mpy", 0, FILES["lib/scan.mpy"] + b"x")
    with pytest.raises(CacheError, match="not in the manifest"):
        fill.write("../escape", 0, b"x")
    assert cache.names() == []  # nothing visible while partial
    with pytest.raises(CacheError, match="not whole"):
        fill.finish()

    again = UpdateCache(tmp_path / "updates", pub).begin(mj, sig)  # the agent restarted
    assert again.missing() == {"app_main.mpy": 5000, "lib/scan.mpy": 0}
    _fill_all(again, folder)
    assert again.finish() == tmp_path / "updates" / "scanner-0.4.0"
    assert cache.names() == ["scanner-0.4.0"]
    assert (tmp_path / "updates" / "scanner-0.4.0" / "files" / "app_main.mpy").read_bytes() == APP


def test_cache_refuses_a_bad_signature_before_writing(tmp_path, release):
    folder, pub, _ = release
    mj, sig = (folder / "manifest.json").read_bytes(), (folder / "manifest.sig").read_bytes()
    cache = UpdateCache(tmp_path / "updates", pub)
    with pytest.raises(CacheError, match="signature"):
        cache.begin(mj, bytes(64))
    other = public_key_of(new_private_key())
    with pytest.raises(CacheError, match="signature"):
        UpdateCache(tmp_path / "updates", other).begin(mj, sig)
    with pytest.raises(CacheError, match="public key"):
        UpdateCache(tmp_path / "updates", None).begin(mj, sig)
    assert not (tmp_path / "updates").exists()


def test_cache_hash_mismatch_is_refused_and_only_that_file_refetched(tmp_path, release):
    folder, pub, _ = release
    mj, sig = (folder / "manifest.json").read_bytes(), (folder / "manifest.sig").read_bytes()
    cache = UpdateCache(tmp_path / "updates", pub)
    fill = cache.begin(mj, sig)
    bad = bytearray(APP)
    bad[123] ^= 1
    fill.write("app_main.mpy", 0, bytes(bad))
    fill.write("lib/scan.mpy", 0, FILES["lib/scan.mpy"])
    with pytest.raises(CacheError, match="hash mismatch"):
        fill.finish()
    assert cache.names() == []
    assert fill.missing() == {"app_main.mpy": 0}
    fill.write("app_main.mpy", 0, APP)
    fill.finish()
    assert cache.names() == ["scanner-0.4.0"]


def test_a_different_build_of_the_same_version_starts_over(tmp_path, release):
    folder, pub, priv = release
    cache = UpdateCache(tmp_path / "updates", pub)
    fill = cache.begin((folder / "manifest.json").read_bytes(), (folder / "manifest.sig").read_bytes())
    fill.write("app_main.mpy", 0, APP[:100])
    other = write_bundle(tmp_path / "rebuilt", "scanner", "0.4.0", 6, {"app_main.mpy": b"new"}, priv, created_ms=2)
    fill2 = cache.begin((other / "manifest.json").read_bytes(), (other / "manifest.sig").read_bytes())
    assert fill2.missing() == {"app_main.mpy": 0}


def test_settings_start_the_server_only_when_configured(tmp_path, release, keys_file):
    folder, pub, _ = release
    data = tmp_path / "data"

    async def scenario():
        assert await start_update_server(AgentSettings(agent_data=data), data) is None
        (tmp_path / "release.pub").write_text(pub.hex())
        s = AgentSettings(agent_data=data, update_listen="127.0.0.1", update_port=0, update_keys=keys_file,
                          release_pubkey=tmp_path / "release.pub")
        server = await start_update_server(s, data)
        try:
            server.cache.add(folder)
            assert server.cache.names() == ["scanner-0.4.0"]
            r, body = await asyncio.to_thread(get, server, f"{BASE}/files/lib/scan.mpy",
                                              headers={"Range": "bytes=0-3"})
            assert r.status == 206 and body == b"scan"
        finally:
            await server.close()

    asyncio.run(scenario())


# ---------------------------------------------------------------- in the agent


KIT = """
id = "uk"
name = "Update kit"
agent = "uk-agent"

[[devices]]
id = "uk-flood"
role = "light"
model = "relay"
bus = "gpio:17"
"""


def test_the_running_agent_serves_its_cache_from_its_settings_file(broker, tmp_path, release, keys_file):
    """`popkit agent run` as the service starts it (an EnvironmentFile), serving what its cache holds,
    until it is stopped."""
    import signal
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    folder, pub, _ = release
    data = tmp_path / "data"
    UpdateCache(data / "updates", pub).add(folder)
    with socket.socket() as s:  # a free port for the agent's setting
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "release.pub").write_text(pub.hex())
    (tmp_path / "kit.toml").write_text(KIT)
    (tmp_path / "agent.env").write_text(f"POPKIT_MQTT_URL={broker.url}\nPOPKIT_AGENT_DATA={data}\n"
                                        f"POPKIT_UPDATE_LISTEN=127.0.0.1\nPOPKIT_UPDATE_PORT={port}\n"
                                        f"POPKIT_UPDATE_KEYS={keys_file}\nPOPKIT_RELEASE_PUBKEY={tmp_path / 'release.pub'}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("POPKIT_")}
    popkit = Path(sys.executable).with_name("popkit")
    proc = subprocess.Popen([str(popkit), "agent", "run", "--kit", str(tmp_path / "kit.toml"), "--simulate",
                             "--env", str(tmp_path / "agent.env")], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "agent.log", "wb"))
    server = type("At", (), {"port": port})
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                r, body = get(server, f"{BASE}/manifest.json")
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "agent.log").read_text()[-2000:]
                time.sleep(0.2)
        assert r.status == 200 and r.getheader("X-Popkit-Tag") == device_tag(DOOR_KEY, body).hex()
        r, body = get(server, f"{BASE}/files/app_main.mpy", headers={"Range": "bytes=100-199"})
        assert r.status == 206 and body == APP[100:200]
        # Stopped once its start is over (a SIGTERM during the power-up self-test is another matter).
        from agent import control

        assert any("verdict" in m for m in control.request(control.socket_path(data), "uk", "selftest"))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(30) == 0, (tmp_path / "agent.log").read_text()[-2000:]
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    with pytest.raises(OSError):  # stopped with the agent
        get(server, f"{BASE}/manifest.json")
