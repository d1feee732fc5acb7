"""MQTT plumbing shared by agent, fleet, simulators, tools and benchmarks: URLs, accounts and paho clients."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class MqttUrl:
    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None
    protocol: str | None = None  # "5" or "3.1.1" when the URL says (?protocol=...), else None
    ca: str | None = None  # ?ca=FILE: the CA certificate (PEM) the broker's must be signed by
    # ?account=FILE: a file `popkit kit provision` wrote (devices/<id>.json, fleet.json) holding the
    # login and the CA, so the password is on no command line, in no URL that gets logged.
    account: str | None = None

    @property
    def v5(self) -> bool:
        return self.protocol != "3.1.1"


def parse_mqtt_url(url: str) -> MqttUrl:
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ValueError(f"unsupported MQTT URL scheme {parts.scheme!r} in {url!r} (use mqtt:// or mqtts://)")
    tls = parts.scheme in ("mqtts", "ssl")
    if not parts.hostname:
        raise ValueError(f"no host in MQTT URL {url!r}")
    query = parse_qs(parts.query)
    protocol = query.get("protocol", [None])[-1]
    if protocol not in (None, "5", "3.1.1", "311"):
        raise ValueError(f"unsupported MQTT protocol {protocol!r} in {url!r} (5 or 3.1.1)")
    return MqttUrl(parts.hostname, parts.port or (8883 if tls else 1883), tls, parts.username, parts.password,
                   protocol={"311": "3.1.1"}.get(protocol, protocol), ca=query.get("ca", [None])[-1],
                   account=query.get("account", [None])[-1])


def read_account(path: str) -> dict:
    """The ``broker`` part of a provisioned account file: user, password, and tls/ca when the kit has TLS."""
    import json

    try:
        broker = json.loads(Path(path).read_text())["broker"]
        if not isinstance(broker.get("user"), str) or not isinstance(broker.get("password"), str):
            raise KeyError("user/password")
    except OSError as exc:
        raise ValueError(f"MQTT account file {path}: cannot read: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"MQTT account file {path}: not an account `popkit kit provision` wrote ({exc})") from None
    return broker


def redacted(url: str) -> str:
    """``url`` fit for a log: a password in it replaced by ***."""
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


def tls_context(ca_file: str | None = None, ca_pem: str | None = None):
    """A client TLS context that verifies the broker: against the kit's CA when given, else the system's."""
    import ssl

    ctx = ssl.create_default_context(cafile=ca_file, cadata=ca_pem)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def new_client(client_id: str, *, v5: bool = True, manual_ack: bool = False, client_class=None):
    """A paho 2.x client (or ``client_class``, a subclass) with our reconnect and error policy."""
    import paho.mqtt.client as mqtt

    client = (client_class or mqtt.Client)(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        clean_session=None if v5 else False,
        manual_ack=manual_ack,
    )
    # paho's own backoff doubles from min to max; the jitter producers need lives in agent.link.
    client.reconnect_delay_set(min_delay=1, max_delay=10)
    # A bug in one callback must not kill the network thread and leave the process deaf: log it.
    client.suppress_exceptions = True
    # The logger keeps the name it had under popkit/: operators' log filters and the tests select on it.
    logger = logging.getLogger(f"popkit.mqtt.{client_id}")
    logger.addFilter(_after_our_disconnect)
    client.enable_logger(logger)
    return client


def _after_our_disconnect(record: logging.LogRecord) -> bool:
    """Drop the ERROR paho's network loop logs once more after *we* disconnected (its state says
    DISCONNECTED then): every clean stop printed it. A lost broker still logs (state CONNECTING)."""
    msg = record.getMessage()
    return not (msg.startswith("Client is not connected") and msg.endswith("MQTT_CS_DISCONNECTED"))


def client_for(url: str, client_id: str, *, manual_ack: bool = False, default_protocol: str = "5", client_class=None):
    """A client speaking the protocol version the URL asks for (else ``default_protocol``),
    with its credentials and TLS set."""
    target = parse_mqtt_url(url)
    client = new_client(client_id, v5=(target.protocol or default_protocol) == "5", manual_ack=manual_ack,
                        client_class=client_class)
    user, password, ca_pem = target.username, target.password, None
    if target.account:
        acct = read_account(target.account)
        user, password, ca_pem = acct["user"], acct["password"], acct.get("ca")
    if user:
        client.username_pw_set(user, password)
    if target.tls:
        client.tls_set_context(tls_context(target.ca, ca_pem))
    return client, target


def session_kwargs(client, *, clean_start: bool, properties=None) -> dict:
    """connect() arguments for the client's protocol: v5 takes clean_start and properties, 3.1.1 neither
    (its session persistence was fixed by clean_session when the client was made)."""
    import paho.mqtt.client as mqtt

    if client.protocol == mqtt.MQTTv5:
        return {"clean_start": clean_start, "properties": properties}
    return {}
