"""Fetching a release bundle from the fleet into the kit's cache (docs/updates.md, "Delivery
through the kit"; the route is the fleet's ``GET /api/v1/releases/<release>/bundle/...``).

The fleet's update command names the bundle's folder (``url``, ending in ``/``) and a token for
this kit and release (``Authorization: Bearer``). The fetch takes ``manifest.json`` and
``manifest.sig`` first: the manifest's SHA-256 must be the one the command names, and the cache
checks the Ed25519 signature before it writes a byte (``UpdateCache.begin``). Then each file not
yet whole is asked for with ``Range: bytes=<what the cache holds>-``, so an uplink cut
mid-download resumes where it stopped and no byte already cached is downloaded twice; a body cut
short keeps what arrived.

Transient failures (refused, reset, timed out, a 5xx, 408, 429) are retried with backoff, resumed,
until the command's expiry; anything else (401/403: a bad or expired token; 404; 416; a manifest
that is not the one named; a bad signature; a hash mismatch) is final, with its reason for the ack.
A verification failure leaves nothing in the cache. One fetch per release runs at a time however
many devices' commands name it, and a release already cached whole is not fetched again.

Plain ``urllib`` in a worker thread: the agent's extra carries no HTTP client of its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import logging
import shutil
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from agent.link import backoff_delay
from agent.updates.cache import PARTIAL, CacheError, UpdateCache
from kits.contract import UpdateCommandArgs

log = logging.getLogger("popkit.agent.updates")

CHUNK = 64 * 1024
TIMEOUT_S = 30.0  # per socket operation: a stalled uplink is a transient failure, resumed
MAX_MANIFEST = 1024 * 1024
MAX_SIG = 64
RESERVE = 64 * 1024 * 1024  # left free on the Pi's card: its outbox and stores must not run out for a release
_TRANSIENT_STATUS = {408, 425, 429}


class FetchError(Exception):
    """The fetch failed for good; the message is the reason for the fleet (the ack's detail)."""


class _Transient(Exception):
    """Worth another try, from where the cache stands."""


class BundleFetcher:
    """Fetches bundles into ``cache``. ``backoff_s``/``backoff_cap_s``: the first retry's delay and
    the longest one (tests make them short); ``opener``: urllib's (tests count requests on the server)."""

    def __init__(self, cache: UpdateCache, *, timeout_s: float = TIMEOUT_S, backoff_s: float = 1.0,
                 backoff_cap_s: float = 60.0, clock: Callable[[], float] = time.time,
                 disk_free: Callable[[Path], int] | None = None):
        self.cache = cache
        self.timeout_s = timeout_s
        self.backoff_s, self.backoff_cap_s = backoff_s, backoff_cap_s
        self.clock = clock
        self.disk_free = disk_free or (lambda path: shutil.disk_usage(path).free)
        self._running: dict[str, tuple[str, asyncio.Future[Path]]] = {}  # release -> (its sha, the one fetch)
        self.counts = {"fetches": 0, "retries": 0, "bytes": 0, "failed": 0}

    async def fetch(self, args: UpdateCommandArgs, deadline_ms: int | None = None) -> Path:
        """The bundle's folder in the cache, fetched if need be. Several callers for one release
        share one fetch (the first caller's url, token and deadline)."""
        have = self._cached(args)
        if have is not None:
            return have
        sha, running = self._running.get(args.release, (None, None))
        if running is None:
            running = asyncio.ensure_future(self._fetch(args, deadline_ms))
            self._running[args.release] = (args.manifest_sha256, running)
            running.add_done_callback(self._done(args.release))
        elif sha != args.manifest_sha256:
            # Two builds of one version at once: the fleet refuses a version uploaded twice, so this is
            # a stale command; the one being fetched goes on, and this one is told so, not handed it.
            raise FetchError(f"bundle: another build of {args.release} is being fetched (manifest_sha256 differs)")
        return await asyncio.shield(running)

    def _done(self, release: str) -> Callable[[asyncio.Future[Path]], None]:
        def forget(_f: asyncio.Future[Path]) -> None:
            self._running.pop(release, None)
        return forget

    def _cached(self, args: UpdateCommandArgs) -> Path | None:
        folder = self.cache.folder(args.release)
        if folder is None:
            return None
        try:
            digest = hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest()
        except OSError:
            return None
        return folder if digest == args.manifest_sha256 else None  # another build of it: fetched again

    async def _fetch(self, args: UpdateCommandArgs, deadline_ms: int | None) -> Path:
        self.counts["fetches"] += 1
        attempt = 0
        while True:
            try:
                return await asyncio.to_thread(self._once, args)
            except FetchError:
                self.counts["failed"] += 1
                raise
            except _Transient as exc:
                delay = backoff_delay(attempt, self.backoff_s, self.backoff_cap_s)
                if deadline_ms is not None and (self.clock() + delay) * 1000 >= deadline_ms:
                    self.counts["failed"] += 1
                    raise FetchError(f"fetch: gave up after {attempt + 1} tries, the command expires: {exc}") from None
                attempt += 1
                self.counts["retries"] += 1
                log.info("fetch of %s: %s; again in %.1fs, from where it stopped", args.release, exc, delay)
                await asyncio.sleep(delay)

    # ------------------------------------------------------------ one try (a worker thread)

    def _once(self, args: UpdateCommandArgs) -> Path:
        manifest_json = self._get_small(args, "manifest.json", MAX_MANIFEST)
        if hashlib.sha256(manifest_json).hexdigest() != args.manifest_sha256:
            raise FetchError("bundle: manifest.json is not the one the fleet named (manifest_sha256 differs)")
        sig = self._get_small(args, "manifest.sig", MAX_SIG)
        try:
            fill = self.cache.begin(manifest_json, sig)
        except CacheError as exc:
            raise FetchError(f"bundle: {exc}") from None
        if fill.name != args.release:
            raise FetchError(f"bundle: the manifest is {fill.name}, the command names {args.release}")
        missing = fill.missing()
        need = sum(e.size for e in fill.manifest.files if e.path in missing) - sum(missing.values())
        free = self.disk_free(self.cache.root)
        if need > free - RESERVE:
            raise FetchError(f"bundle: {need} bytes to fetch and {free} free on the kit's card "
                             f"({RESERVE // 2**20} MB stay free for its outbox)")
        for path, offset in missing.items():
            self._get_file(args, fill, path, offset)
        try:
            return fill.finish()
        except CacheError as exc:
            # Verified bytes that do not verify are not kept: the next command starts afresh.
            shutil.rmtree(self.cache.root / PARTIAL / fill.name, ignore_errors=True)
            raise FetchError(f"bundle: {exc}") from None

    def _open(self, args: UpdateCommandArgs, name: str, offset: int | None = None):
        headers = {"Authorization": f"Bearer {args.token}", "User-Agent": "popkit-agent"}
        if offset is not None:
            headers["Range"] = f"bytes={offset}-"
        req = urllib.request.Request(args.url + name, headers=headers)
        try:
            return urllib.request.urlopen(req, timeout=self.timeout_s)
        except urllib.error.HTTPError as exc:
            exc.close()
            why = f"{name}: HTTP {exc.code}"
            if exc.code >= 500 or exc.code in _TRANSIENT_STATUS:
                raise _Transient(why) from None
            raise FetchError(f"fetch: {why}" + {401: " (token refused)", 403: " (token refused)",
                                                404: " (the fleet has no such bundle)"}.get(exc.code, "")) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise _Transient(f"{name}: {getattr(exc, 'reason', exc)}") from None

    def _get_small(self, args: UpdateCommandArgs, name: str, limit: int) -> bytes:
        with self._open(args, name) as r:
            try:
                body = r.read(limit + 1)
            except (OSError, http.client.HTTPException) as exc:
                raise _Transient(f"{name}: {exc}") from None
        if len(body) > limit:
            raise FetchError(f"bundle: {name} is over {limit} bytes")
        return body

    def _get_file(self, args: UpdateCommandArgs, fill, path: str, offset: int) -> None:
        name = f"files/{path}"
        with self._open(args, name, offset) as r:
            if r.status == 206:
                start = _range_start(r.headers.get("Content-Range", ""))
                if start != offset:
                    raise FetchError(f"fetch: {name}: asked from byte {offset}, the fleet sent from {start}")
            elif not (r.status == 200 and offset == 0):
                raise FetchError(f"fetch: {name}: HTTP {r.status} to a range request")
            while True:
                try:
                    block = r.read(CHUNK)
                except http.client.IncompleteRead as exc:  # the uplink cut mid-body: keep what came
                    if exc.partial:
                        offset = self._write(fill, path, offset, exc.partial)
                    raise _Transient(f"{name}: cut at byte {offset}") from None
                except (OSError, socket.timeout, http.client.HTTPException) as exc:
                    raise _Transient(f"{name}: {exc} at byte {offset}") from None
                if not block:
                    break
                offset = self._write(fill, path, offset, block)
        if path in fill.missing():
            raise _Transient(f"{name}: ended at byte {fill.have(path)}")

    def _write(self, fill, path: str, offset: int, block: bytes) -> int:
        try:
            new = fill.write(path, offset, block)
        except CacheError as exc:
            raise FetchError(f"bundle: {exc}") from None
        self.counts["bytes"] += len(block)
        return new


def _range_start(content_range: str) -> int | None:
    # "bytes a-b/size"
    try:
        unit, _, rest = content_range.partition(" ")
        return int(rest.split("-", 1)[0]) if unit == "bytes" else None
    except ValueError:
        return None
