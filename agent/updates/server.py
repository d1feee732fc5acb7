"""The kit-network update server: the kit's ESP32s download their bundles from the agent.

Plain HTTP/1.1 on the kit network (docs/updates.md, "Delivery through the kit"), one request a
connection:

* ``GET /updates/<role>-<version>/manifest.json`` with ``X-Popkit-Device: <id>``: the manifest's
  exact bytes and ``X-Popkit-Tag``: HMAC-SHA256 of them under that device's update key.
* ``GET /updates/<role>-<version>/files/<path>`` (``X-Popkit-Device`` too), ``Range: bytes=a-b``
  or ``bytes=a-``: 206 with that slice; no Range: 200 with the whole file; a range outside the
  file: 416.

A device the keys file does not name gets 403 and is counted (``refused``); a bundle or a file the
cache does not hold gets 404. Only names the cache lists and paths its verified manifest lists are
ever opened: nothing of the request line is joined into a path. Bodies go out in chunks from the
file with the socket's back-pressure, never a whole bundle in memory, and at most
``MAX_CLIENTS`` connections are served at once (the rest get 503 and retry).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
from pathlib import Path

from agent.updates.cache import UpdateCache
from agent.updates.keys import DeviceKeys
from kits.release import BundleError, device_tag, load_bundle

log = logging.getLogger("popkit.agent.updates")

DEFAULT_PORT = 8468
MAX_CLIENTS = 16
MAX_HEAD = 4096  # request line + headers: an ESP32 sends a few hundred bytes
HEAD_TIMEOUT_S = 10.0
SEND_CHUNK = 16 * 1024

_PATH = re.compile(r"/updates/([a-z]+-\d+\.\d+\.\d+)/(manifest\.json|files/(.+))")
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")
_REASONS = {200: "OK", 206: "Partial Content", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 416: "Range Not Satisfiable", 503: "Service Unavailable"}


class UpdateServer:
    def __init__(self, cache: UpdateCache, keys: DeviceKeys, host: str, port: int = DEFAULT_PORT):
        self.cache, self.keys, self.host, self.port = cache, keys, host, port
        self.refused: collections.Counter[str] = collections.Counter()  # device id -> 403s
        self.served: collections.Counter[str] = collections.Counter()  # "manifest" / "chunk" -> responses sent
        self._server: asyncio.base_events.Server | None = None
        self._clients = 0

    async def start(self) -> "UpdateServer":
        self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=MAX_HEAD)
        self.port = self._server.sockets[0].getsockname()[1]  # port 0 (tests): the one the system chose
        log.info("update server on %s:%d, serving %s", self.host, self.port, self.cache.root)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients += 1
        try:
            if self._clients > MAX_CLIENTS:
                await _respond(writer, 503, {"Retry-After": "2"})
                return
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ConnectionError):
                return  # a client that says nothing sensible is closed, not answered
            await self._answer(head, writer)
        except ConnectionError:
            pass  # the device went away mid-body: it resumes with a Range
        finally:
            self._clients -= 1
            writer.close()
            try:
                await writer.wait_closed()
            except ConnectionError:
                pass

    async def _answer(self, head: bytes, writer: asyncio.StreamWriter) -> None:
        try:
            line, *header_lines = head.decode("latin-1").split("\r\n")
            method, target, _version = line.split(" ")
        except ValueError:
            await _respond(writer, 400)
            return
        headers = {}
        for h in header_lines:
            name, sep, value = h.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if method not in ("GET", "HEAD"):
            await _respond(writer, 405, {"Allow": "GET, HEAD"})
            return
        device = headers.get("x-popkit-device", "")
        key = self.keys.get(device) if device else None
        if key is None:
            who = device[:64] or "-"
            self.refused[who] += 1
            if self.refused[who] == 1:  # once per id: a client that keeps asking does not fill the journal
                log.warning("update request from %r refused: not a device of this kit", who)
            await _respond(writer, 403)
            return
        m = _PATH.fullmatch(target.split("?", 1)[0])
        folder = self.cache.folder(m.group(1)) if m else None
        if m is None or folder is None:
            await _respond(writer, 404)
            return
        try:
            manifest, manifest_json, _sig = load_bundle(folder)
        except BundleError:
            await _respond(writer, 404)
            return
        body = method == "GET"
        if m.group(3) is None:
            self.served["manifest"] += 1
            await _respond(writer, 200, {"Content-Type": "application/json",
                                         "X-Popkit-Tag": device_tag(key, manifest_json).hex()},
                           manifest_json if body else b"", length=len(manifest_json))
            return
        entry = next((f for f in manifest.files if f.path == m.group(3)), None)
        if entry is None:
            await _respond(writer, 404)
            return
        await self._file(writer, folder / "files" / entry.path, entry.size, headers.get("range"), body)

    async def _file(self, writer, path: Path, size: int, range_header: str | None, body: bool) -> None:
        start, end, status = 0, size - 1, 200
        if range_header is not None:
            r = _RANGE.fullmatch(range_header.replace(" ", ""))
            if r is None:  # several ranges, a suffix range: an ESP32 asks for one slice at a time
                await _respond(writer, 416, {"Content-Range": f"bytes */{size}"})
                return
            start = int(r.group(1))
            end = min(int(r.group(2)), size - 1) if r.group(2) else size - 1
            if start >= size or end < start:
                await _respond(writer, 416, {"Content-Range": f"bytes */{size}"})
                return
            status = 206
        extra = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        if status == 206:
            extra["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = end - start + 1 if size else 0
        await _respond(writer, status, extra, length=length)
        self.served["chunk"] += 1
        if not body:
            return
        with open(path, "rb") as f:
            f.seek(start)
            left = length
            while left > 0:
                block = f.read(min(SEND_CHUNK, left))
                if not block:
                    break  # the cache's files are verified and never shrink; a short read is not papered over
                writer.write(block)
                await writer.drain()  # the slowest ESP32 sets the pace, and the buffer stays one chunk
                left -= len(block)


async def _respond(writer: asyncio.StreamWriter, status: int, headers: dict | None = None, body: bytes = b"",
                   length: int | None = None) -> None:
    lines = [f"HTTP/1.1 {status} {_REASONS[status]}", f"Content-Length: {len(body) if length is None else length}",
             "Connection: close", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    await writer.drain()


def open_cache(settings, data: Path) -> UpdateCache:
    """The kit's cache, with the release public key from the settings (None when unset or
    unreadable, logged: cached bundles are served, new ones refused)."""
    from kits.release import parse_public_key

    pub = None
    if settings.release_pubkey is not None:
        try:
            pub = parse_public_key(settings.release_pubkey.read_bytes())
        except (OSError, ValueError) as exc:
            log.error("release public key %s unusable (%s): cached bundles are served, new ones refused",
                      settings.release_pubkey, exc)
    return UpdateCache(data / "updates", pub)


async def start_update_server(settings, data: Path, cache: UpdateCache | None = None) -> UpdateServer | None:
    """The server when the settings name a kit address to listen on (POPKIT_UPDATE_LISTEN), else None.
    A fault here is logged and the kit runs on without updates: a show outranks its next release."""
    if not settings.update_listen:
        return None
    server = UpdateServer(cache or open_cache(settings, data), DeviceKeys(settings.update_keys),
                          settings.update_listen, settings.update_port)
    try:
        return await server.start()
    except OSError as exc:
        log.error("no update server on %s:%d (%s)", settings.update_listen, settings.update_port, exc)
        return None
