"""A release's bundle for the kits' agents: GET /api/v1/releases/{release}/bundle/manifest.json,
.../manifest.sig and .../files/{path}, authorised by a bundle token (fleet/updates/tokens.py) that
the rollout worker sends in each update command (docs/updates.md, "Rollouts").

Plain Starlette routes, not the API's guarded ones: the caller is a kit's agent holding a capability
for one kit and one release, not a signed-in user, so the user guard (fleet/auth/deps.py
check_routes) does not apply; the token is checked here, on every request, before anything is read.

Files honour ``Range: bytes=a-b`` and ``bytes=a-`` (206 and Content-Range; the end is clipped to the
file), so an agent whose uplink dropped resumes where it stopped; a start past the end, several
ranges or a suffix range is 416 (as the kit's own update server answers). Only paths the stored
manifest lists are opened: the request's path is looked up among them, never joined into a path.
Bodies are streamed in 64 KB reads. Refusals are counted by reason (REFUSED, /metrics).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from fleet.updates.tokens import BadBundleToken, check
from kits.release import FILES, MANIFEST, SIGNATURE

log = logging.getLogger("popkit.fleet.updates")

PREFIX = "/api/v1/releases/{release_id}/bundle"
CHUNK = 64 * 1024
_RANGE = re.compile(r"^bytes=([0-9]{1,15})-([0-9]{0,15})$")
REASONS = ("missing_token", "bad_token", "expired_token", "other_release", "unknown_release", "unknown_file",
           "bad_range")
# Refusals since this process started, by reason (one of REASONS): a kit's agent sending a stale token
# or an old URL shows here before it shows as a stuck rollout.
REFUSED: Counter = Counter()


def _refuse(status: int, reason: str, detail: str, headers: dict | None = None) -> JSONResponse:
    REFUSED[reason] += 1
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _grant_or_refusal(request: Request):
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return _refuse(401, "missing_token", "send the update command's token: Authorization: Bearer <token>",
                       {"WWW-Authenticate": "Bearer"})
    try:
        grant = check(request.app.state.auth.key, token.strip())
    except BadBundleToken as exc:
        reason = "expired_token" if str(exc) == "expired" else "bad_token"
        return _refuse(401, reason, f"bundle token {exc}: the fleet sends a new one with its next update command",
                       {"WWW-Authenticate": "Bearer"})
    release_id = request.path_params["release_id"]
    if grant.release != release_id:
        return _refuse(403, "other_release", f"this token is for {grant.release}, not {release_id}")
    return grant


def _release(request: Request):
    """(the release, its folder) or a refusal."""
    grant = _grant_or_refusal(request)
    if isinstance(grant, Response):
        return grant
    store = request.app.state.store
    release = store.updates.release(grant.release)
    if release is None:
        return _refuse(404, "unknown_release", f"no release {grant.release}")
    return release, Path(request.app.state.settings.release_dir) / release.id


def _whole(path: Path, media: str, etag: str | None = None) -> Response:
    body = path.read_bytes()  # manifest.json and manifest.sig: a few KB at most
    return Response(body, media_type=media, headers={"ETag": f'"{etag}"'} if etag else None)


def manifest_json(request: Request) -> Response:
    got = _release(request)
    if isinstance(got, Response):
        return got
    release, folder = got
    return _whole(folder / MANIFEST, "application/json", request.app.state.store.updates.manifest_sha256(release.id))


def manifest_sig(request: Request) -> Response:
    got = _release(request)
    if isinstance(got, Response):
        return got
    return _whole(got[1] / SIGNATURE, "application/octet-stream")


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte of ``Range`` on a file of ``size`` bytes, or None without one; ValueError
    for a range this route does not serve (past the end, several, a suffix, malformed)."""
    if header is None:
        return None
    m = _RANGE.match(header.strip())
    if m is None:
        raise ValueError("one range, bytes=a-b or bytes=a-")
    first = int(m.group(1))
    last = int(m.group(2)) if m.group(2) else size - 1
    if first >= size or last < first:
        raise ValueError(f"outside the file ({size} bytes)")
    return first, min(last, size - 1)


def _stream(path: Path, start: int, length: int):
    with path.open("rb") as f:
        f.seek(start)
        while length > 0:
            chunk = f.read(min(CHUNK, length))
            if not chunk:  # the file shrank under us: the length promised cannot be kept
                raise OSError(f"{path} ended early")
            length -= len(chunk)
            yield chunk


def bundle_file(request: Request) -> Response:
    got = _release(request)
    if isinstance(got, Response):
        return got
    release, folder = got
    wanted = request.path_params["path"]
    entry = next((f for f in release.manifest.get("files", []) if f.get("path") == wanted), None)
    if entry is None:
        return _refuse(404, "unknown_file", f"{release.id} has no file {wanted[:100]!r}")
    path = folder / FILES / entry["path"]  # the manifest's own path, checked when the bundle was accepted
    try:
        size = path.stat().st_size
    except OSError:
        log.error("release %s: files/%s is listed but not kept in %s", release.id, entry["path"], folder)
        return JSONResponse({"detail": f"the fleet lost files/{entry['path']} of {release.id}"}, status_code=500)
    headers = {"Accept-Ranges": "bytes", "ETag": f'"{entry["sha256"]}"'}
    try:
        rng = byte_range(request.headers.get("range"), size)
    except ValueError as exc:
        return _refuse(416, "bad_range", f"Range {request.headers.get('range', '')[:60]!r}: {exc}",
                       {"Content-Range": f"bytes */{size}"})
    if rng is None:
        return StreamingResponse(_stream(path, 0, size), media_type="application/octet-stream",
                                 headers={**headers, "Content-Length": str(size)})
    first, last = rng
    return StreamingResponse(_stream(path, first, last - first + 1), status_code=206,
                             media_type="application/octet-stream",
                             headers={**headers, "Content-Length": str(last - first + 1),
                                      "Content-Range": f"bytes {first}-{last}/{size}"})


routes = [
    Route(f"{PREFIX}/manifest.json", manifest_json, methods=["GET"]),
    Route(f"{PREFIX}/manifest.sig", manifest_sig, methods=["GET"]),
    Route(f"{PREFIX}/files/{{path:path}}", bundle_file, methods=["GET"]),
]


def render_metrics() -> str:
    """Prometheus text: the bundle route's refusals by reason."""
    lines = ["# HELP popkit_bundle_refused_total Bundle downloads refused (a kit's agent's token or request), by reason.",
             "# TYPE popkit_bundle_refused_total counter"]
    lines += [f'popkit_bundle_refused_total{{reason="{r}"}} {REFUSED.get(r, 0)}' for r in REASONS]
    return "\n".join(lines) + "\n"
