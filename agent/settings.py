"""Agent settings: command-line flags override POPKIT_* environment variables override the
agent's settings file override defaults.

The settings file is the one the service reads (systemd's ``EnvironmentFile=``,
``/etc/popkit/agent.env`` on a Pi): ``popkit kit up`` and ``popkit kit down`` read it too, so
beside the running agent they reach the same broker and the same data folder as the service
without the crew typing either. It is read with systemd's own rules (one ``KEY=VALUE`` a line,
``#`` or ``;`` comments, optional quotes around the value) and checked before anything is
opened: a line that is not ``KEY=VALUE``, or a bad value, is refused with the file, the line
and the field, and the value itself is never echoed (the broker URL may carry a password).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from agent.errors import AgentError

ENV_PREFIX = "POPKIT_"
DEFAULT_ENV_FILE = Path("/etc/popkit/agent.env")  # deploy/popkit-agent.service's EnvironmentFile
SERVICE_DATA = Path("/var/lib/popkit")  # the service's POPKIT_AGENT_DATA (its StateDirectory)

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class AgentSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    mqtt_url: str = Field(default="mqtt://127.0.0.1:1883", description="the kit's broker (or the fleet's)")
    agent_data: Path = Field(default=Path("var/agent"), description="folder for the outbox")
    outbox_cap: int = Field(default=50_000, ge=100, description="entries before oldest telemetry is dropped")
    resend_after_s: float = Field(default=15.0, gt=0, description="resend a message whose receipt is this late")
    time_period_s: float = Field(default=10.0, gt=0, le=3600, description="how often the kit's time goes to its "
                                 "ESP32s on popkit/v1/<kit>/time (also at once on a device's birth: agent/kitclock.py)")

    kit_events: str = Field(default="", pattern=r"^[A-Za-z0-9_.,-]*$",
                            description="events whose keys were flashed onto the kit's scanners, comma-separated "
                            "(popkit kit provision writes it): `popkit tickets revoke --kit` takes them before any "
                            "ticket of theirs was scanned")

    # Field updates (agent/updates/, docs/updates.md): the kit-network server is off unless a kit
    # address to listen on is set.
    update_listen: str = Field(default="", description="kit address the ESP32s download updates from "
                               "(e.g. 192.168.4.1); empty: no update server")
    update_port: int = Field(default=8468, ge=0, le=65535, description="the update server's TCP port (0: any free one)")
    update_keys: Path = Field(default=Path("/etc/popkit/update-keys.json"),
                              description="device id -> update key (0600), written by popkit kit provision")
    release_pubkey: Path | None = Field(default=None, description="the release public key file: bundles are "
                                        "checked against it before the kit keeps them")
    update_quiet_s: float = Field(default=600.0, ge=0, le=86400, description="an update offer waits until no door "
                                  "has checked anyone in for this long (the kit is in use)")

    # The till (agent/till/, docs/retail.md "The till"): auto runs it on a kit with a receipt printer.
    till: Literal["auto", "on", "off"] = Field(default="auto", description="the kit's till: auto (on when the "
                                                "manifest has a printer), on, off")
    till_printer: str = Field(default="", pattern=r"^([a-z0-9][a-z0-9_-]{0,62})?$",
                              description="the printer (device id) for till receipts; empty: the manifest's first")
    till_listen: str = Field(default="", pattern=r"^(([0-9A-Za-z.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?)?$",
                             description="host[:port] of the till page (docs/till.md); empty: the kit network's "
                             "address (POPKIT_UPDATE_LISTEN) on port 8090, or no page without one")

    @field_validator("mqtt_url")
    @classmethod
    def _a_broker_url(cls, url: str) -> str:
        # Refused here, at start, rather than as a paho error deep in the link's thread later.
        from plumbing.mqtt import parse_mqtt_url, redacted

        try:
            parse_mqtt_url(url)
        except ValueError as exc:
            raise ValueError(str(exc).replace(url, redacted(url))) from None
        return url


class SettingsFileError(AgentError, ValueError):
    """The settings file cannot be used; the message names the file, the line and the field."""


def read_env_file(path: Path) -> dict[str, tuple[int, str]]:
    """``KEY -> (line number, value)`` of a systemd EnvironmentFile."""
    try:
        text = path.read_text(encoding="utf-8")
    except PermissionError:
        raise SettingsFileError(f"{path}: permission denied (it is the agent's, mode 0640 root:popkit: run as a "
                                "member of the popkit group, or as root)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsFileError(f"{path}: cannot read it ({exc})") from None
    values: dict[str, tuple[int, str]] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, eq, value = line.partition("=")
        key = key.strip()
        if not eq or not _KEY.fullmatch(key):
            field = _KEY.match(line)
            what = f" (field {field.group(0)})" if field else ""
            raise SettingsFileError(f"{path} line {n}{what}: not KEY=VALUE; the file takes one KEY=VALUE a line, "
                                    "# for a comment")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key] = (n, value)
    return values


def load_settings(env_file: Path | None = None, flags: dict | None = None, *,
                  default_file: Path | None = DEFAULT_ENV_FILE, default_data: Path | None = None) -> AgentSettings:
    """The settings as the service sees them, then the caller's flags.

    ``env_file`` names the file (it must exist); without it ``default_file`` is read when it
    exists. A POPKIT_* variable in this process's environment beats the file (as it always did);
    a flag (``flags``, by field name, None for unset) beats both. ``default_data`` replaces the
    built-in data folder when neither the file, the environment nor a flag names one.
    """
    path = env_file if env_file is not None else default_file
    in_file: dict[str, tuple[int, str]] = {}
    if path is not None and (env_file is not None or path.exists()):
        if not path.is_file():
            raise SettingsFileError(f"{path}: no such settings file")
        in_file = read_env_file(path)
    fields = AgentSettings.model_fields
    from_file = {}
    for key, (_n, value) in in_file.items():
        name = key[len(ENV_PREFIX):].lower() if key.startswith(ENV_PREFIX) else None
        if name in fields and key not in os.environ:
            from_file[name] = value
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    if default_data is not None and "agent_data" not in from_file and f"{ENV_PREFIX}AGENT_DATA" not in os.environ:
        given.setdefault("agent_data", default_data)
    try:
        AgentSettings.model_validate(from_file)  # the file's values on their own: a bad one is the file's
    except ValidationError as exc:
        err = exc.errors()[0]
        key = f"{ENV_PREFIX}{str(err['loc'][0]).upper()}"
        raise SettingsFileError(f"{path} line {in_file[key][0]}: {key}: {_reason(err)}") from None
    try:
        return AgentSettings(**{**from_file, **given})
    except ValidationError as exc:
        err = exc.errors()[0]
        name = str(err["loc"][0])
        flag = {"mqtt_url": "--mqtt", "agent_data": "--data"}.get(name, f"--{name.replace('_', '-')}")
        where = flag if name in given else f"{ENV_PREFIX}{name.upper()} in the environment"
        raise SettingsFileError(f"{where}: {_reason(err)}") from None


def _reason(err: dict) -> str:
    msg = err.get("msg", "invalid")
    return msg.removeprefix("Value error, ")
