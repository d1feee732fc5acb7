"""Start a private MQTT broker: a spawned ``mosquitto`` when the binary exists, else amqtt.

The demo, the tests and the benchmarks all use this, so the broker they run
is configured the same way. It always binds a free loopback port (port 1883
may belong to the machine's own broker) and keeps its data in its own folder,
so a test can stop, SIGKILL and restart it on the same port with its
persistence file intact.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from popkit import lifeline

# Why these settings: the fleet acknowledges a message only after its database
# commit, so it needs hundreds of messages in flight (Mosquitto's default is
# 20), and a queue for an offline fleet session that never silently drops
# (the default max_queued_messages of 1000 would).
MOSQUITTO_CONF = """\
# written by popkit.broker; one private broker per run
listener {port} {host}
{tls}{auth}persistence true
persistence_location {data}/
autosave_interval 1
max_inflight_messages 0
max_queued_messages 0
max_queued_bytes 0
max_packet_size 1048576
# Small messages (a scene command, a receipt) must not wait for a delayed TCP ACK: ~40 ms stalls otherwise.
set_tcp_nodelay true
persistent_client_expiration 7d
log_dest file {data}/mosquitto.log
log_type error
log_type warning
log_type notice
connection_messages true
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on {host}:{port} after {timeout:.0f}s") from None
            time.sleep(0.05)


def mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


class MosquittoBroker:
    """A mosquitto process on a free port with its own config and data folder."""

    kind = "mosquitto"

    def __init__(self, port: int | None = None, data_dir: str | Path | None = None, extra_conf: str = "",
                 password_file: str | Path | None = None, acl_file: str | Path | None = None, tls=None,
                 host: str = "127.0.0.1", netns: str | None = None, die_with_parent: bool = False):
        """``password_file`` and ``acl_file`` (popkit.provision writes both): anonymous clients are
        refused and each account is held to its ACL; without them the broker is open (demo, tests).
        ``tls`` (popkit.tls.TlsFiles): the listener speaks only TLS, with the kit's broker certificate.
        ``netns``: run inside that network namespace (``ip netns exec``, root only; the tests that
        impair a kit's uplink); ``host`` is the address it listens on, and the one its readiness is
        checked at, so it must be reachable from the caller's namespace.
        ``die_with_parent``: the broker gets SIGTERM when this process dies, even by SIGKILL
        (popkit/lifeline.py; start() must then run on the main thread): the demo's broker, which
        must not outlive its supervisor holding a port and a data folder."""
        binary = mosquitto_binary()
        if binary is None:
            raise FileNotFoundError("mosquitto is not installed (apt-get install mosquitto)")
        self.binary = binary
        self.port = port or free_port()
        self.host, self.netns, self.die_with_parent = host, netns, die_with_parent
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="popkit-mosquitto-")).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.conf_path = self.data_dir / "mosquitto.conf"
        auth = "allow_anonymous true\n"
        if password_file is not None:
            auth = f"allow_anonymous false\npassword_file {Path(password_file).resolve()}\n"
            if acl_file is not None:
                auth += f"acl_file {Path(acl_file).resolve()}\n"
        self.tls = tls
        tls_conf = ""
        if tls is not None:
            tls_conf = (f"cafile {Path(tls.ca).resolve()}\ncertfile {Path(tls.cert).resolve()}\n"
                        f"keyfile {Path(tls.key).resolve()}\ntls_version tlsv1.2\n")
        conf = MOSQUITTO_CONF.format(port=self.port, host=host, data=self.data_dir, auth=auth, tls=tls_conf)
        if os.geteuid() == 0:
            # Started as root, mosquitto drops to the 'mosquitto' user, which cannot write
            # our data folder (often under a 0700 temp dir): no log, no persistence. This
            # broker is private (loopback, or a test's own namespace), so it keeps the caller's user.
            conf += "user root\n"
        self.conf_path.write_text(conf + extra_conf)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        if self.tls is not None:
            return f"mqtts://{self.host}:{self.port}?ca={Path(self.tls.ca).resolve()}"
        return f"mqtt://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> "MosquittoBroker":
        if self.proc and self.proc.poll() is None:
            return self
        # `ip netns exec` execs the broker: the pid stays the broker's, so signals reach it.
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        argv = [*prefix, self.binary, "-c", str(self.conf_path)]
        self.proc = (lifeline.popen if self.die_with_parent else subprocess.Popen)(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # Ctrl-C in a terminal reaches us, we stop it in order
        )
        try:
            wait_for_port(self.port, timeout, host=self.host)
        except TimeoutError:
            err = self._stderr()
            self.kill()
            raise RuntimeError(f"mosquitto did not start on {self.host}:{self.port}: {err}") from None
        return self

    def _stderr(self) -> str:
        if self.proc and self.proc.poll() is not None and self.proc.stderr:
            return self.proc.stderr.read().decode(errors="replace").strip()
        return ""

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop: mosquitto writes its persistence file on SIGTERM."""
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: what a power cut or the OOM killer does; nothing is flushed."""
        self._signal(signal.SIGKILL, 10.0)

    def _signal(self, sig: int, timeout: float) -> None:
        if not self.proc or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()

    def reload(self) -> None:
        """SIGHUP: mosquitto reads its password file and ACL again (a rotation, a revocation)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGHUP)

    def restart(self) -> "MosquittoBroker":
        self.stop()
        return self.start()

    @property
    def running(self) -> bool:
        return bool(self.proc and self.proc.poll() is None)

    def log(self) -> str:
        path = self.data_dir / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> "MosquittoBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


class AmqttBroker:
    """amqtt in a background thread: the demo's broker where mosquitto is not installed.

    Good enough for a demo on a laptop; tests and production use Mosquitto.
    """

    kind = "amqtt"

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self._thread: threading.Thread | None = None
        self._loop = None
        self._broker = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}?protocol=3.1.1"  # amqtt speaks MQTT 3.1.1 only

    def start(self, timeout: float = 15.0) -> "AmqttBroker":
        import asyncio

        import logging

        from amqtt.broker import Broker  # imported here: only the no-mosquitto path needs it

        for chatty in ("amqtt", "transitions"):  # they log every state change at INFO
            logging.getLogger(chatty).setLevel(logging.WARNING)

        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            try:
                self._broker = Broker(config, loop=self._loop)
                self._loop.run_until_complete(self._broker.start())
                self._loop.run_forever()
            except BaseException as exc:  # reported to start()'s caller
                self._error = exc

        self._thread = threading.Thread(target=run, name="amqtt-broker", daemon=True)
        self._thread.start()
        try:
            wait_for_port(self.port, timeout)
        except TimeoutError:
            raise RuntimeError(f"amqtt did not start: {self._error!r}") from None
        return self

    def stop(self) -> None:
        import asyncio

        if self._loop and self._broker:
            fut = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop)
            try:
                fut.result(5)
            except Exception:
                pass
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(5)

    close = stop


def embedded_broker(port: int | None = None, data_dir: str | Path | None = None, die_with_parent: bool = False):
    """Mosquitto when installed (the real thing), amqtt otherwise (a thread: it dies with us anyway)."""
    if mosquitto_binary():
        return MosquittoBroker(port=port, data_dir=data_dir, die_with_parent=die_with_parent)
    return AmqttBroker(port=port)
