"""One authenticated call to the fleet's API for the command line (urllib: httpx is only a dev
extra). The token comes from POPKIT_TOKEN only, never from a command line (ps, history)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request


class FleetRefused(Exception):
    """The fleet could not be reached, or said no: the message says which and why."""


def call(fleet: str, method: str, path: str, body: dict | None = None, timeout: float = 30.0,
         needs: str = "a crew or ops user") -> dict | list:
    """``method path`` on the fleet at ``fleet``; the decoded JSON answer, or FleetRefused with the
    fleet's own reason. ``needs`` says in the hint whose token the call wants."""
    token = os.environ.get("POPKIT_TOKEN")
    if not token:
        raise FleetRefused(f"set POPKIT_TOKEN to an API token (POST /api/v1/auth/token): {needs}")
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(fleet.rstrip("/") + path, data=data, method=method,
                                 headers={"Content-Type": "application/json", "Accept": "application/json",
                                          "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        try:
            detail = json.loads(detail)["detail"]
        except (ValueError, KeyError, TypeError):
            pass
        raise FleetRefused(f"the fleet said {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise FleetRefused(f"cannot reach the fleet at {fleet}: {exc}") from None
