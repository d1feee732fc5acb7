"""sd_notify to a real unix datagram socket, as systemd would listen on it."""

from __future__ import annotations

import os
import secrets
import socket
import tempfile

import pytest

from agent import sdnotify

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs unix sockets")


@pytest.fixture
def listener(monkeypatch):
    """A bound datagram socket at a short path (sun_path is 108 bytes), with NOTIFY_SOCKET pointing at it."""
    folder = tempfile.mkdtemp(prefix="sdn-")
    path = os.path.join(folder, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    yield sock
    sock.close()
    os.unlink(path)
    os.rmdir(folder)


def test_sdnotify_ready_reaches_the_socket(listener):
    assert sdnotify.ready("3 devices up") is True
    assert listener.recv(4096) == b"READY=1\nSTATUS=3 devices up"


def test_sdnotify_watchdog_and_stopping(listener):
    assert sdnotify.watchdog() and sdnotify.stopping()
    assert [listener.recv(4096), listener.recv(4096)] == [b"WATCHDOG=1", b"STOPPING=1"]


@pytest.mark.skipif(not os.path.exists("/proc/net/unix"), reason="abstract sockets are Linux only")
def test_sdnotify_abstract_namespace_socket(monkeypatch):
    name = f"popkit-test-{secrets.token_hex(6)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.watchdog() is True
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_sdnotify_without_systemd_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready() is False
    assert sdnotify.watchdog() is False


def test_sdnotify_dead_socket_is_logged_not_raised(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert sdnotify.watchdog() is False
    assert "sd_notify" in caplog.text


def test_sdnotify_watchdog_period_is_half_of_watchdogsec():
    assert sdnotify.watchdog_period({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert sdnotify.watchdog_period({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert sdnotify.watchdog_period({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert sdnotify.watchdog_period({}) is None
