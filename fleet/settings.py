"""Fleet settings: command-line flags override POPKIT_* environment variables override defaults."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class FleetSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="POPKIT_", extra="ignore")

    mqtt_url: str = Field(default="mqtt://127.0.0.1:1883", description="broker the fleet ingests from")
    db_url: str = Field(default="sqlite:///var/fleet.db", description="SQLAlchemy URL: sqlite:///... or postgresql://...")
    http: str = Field(default="127.0.0.1:8000", description="HOST:PORT the API and page listen on")
    # 3.1.1 by default: paho decodes a v5 PUBLISH ~30% slower (a Properties object per message),
    # the biggest cost of ingest. 3.1.1 has no Receive Maximum, so the broker's in-flight window
    # must be large (Mosquitto: max_inflight_messages 0, as popkit.broker configures it);
    # "5" negotiates the window instead. A ?protocol= in mqtt_url wins over this.
    mqtt_protocol: Literal["5", "3.1.1"] = "3.1.1"
    client_id: str = Field(default="popkit-fleet-1", description="MQTT client id: its persistent session survives restarts")
    # Workers sharing a group split the stream (MQTT shared subscription); empty = plain subscription.
    share_group: str = ""
    batch_max: int = Field(default=1000, ge=1, le=20_000)
    batch_wait_ms: int = Field(default=20, ge=0, le=5000, description="longest a message waits for its batch")
    receive_maximum: int = Field(default=4000, ge=1, le=65535, description="QoS 1 messages in flight to us (MQTT v5)")
    dead_letter_cap: int = Field(default=10_000, ge=100)
    # Silent gaps (fleet/ledger/gaps.py): a seq still missing gap_grace_s after later ones arrived is asked for
    # again (a receipt naming it in `missing`), then after gap_retry_s, doubling up to gap_retry_max_s,
    # gap_max_asks times in all. The grace is what keeps a message another worker is still committing,
    # or one reordered in flight, from being asked for.
    gap_check_s: float = Field(default=0.5, gt=0, le=60, description="how often the worker holding the gap "
                               "lease looks for silent gaps")
    gap_grace_s: float = Field(default=1.0, ge=0, le=60, description="a missing seq is asked for once it has "
                               "stayed missing this long")
    gap_retry_s: float = Field(default=1.0, gt=0, le=600, description="first wait before asking again, doubled per ask")
    gap_retry_max_s: float = Field(default=16.0, gt=0, le=3600, description="longest wait between two asks")
    gap_max_asks: int = Field(default=5, ge=0, le=100, description="asks per missing seq before it is given up "
                              "(it stays counted as missing); 0: never ask")
    historical_after_s: float = Field(default=60.0, gt=0, description="a reading or scan received this long after "
                                      "it happened was held by its kit (an uplink outage): the API marks it historical")
    kits: list[str] = Field(default_factory=list, description="kit manifests to register at start")
    # Health and battery forecast (fleet/health.py, fleet/forecast.py).
    heartbeat_timeout_s: float = Field(default=90.0, gt=0, description="an online device that sent nothing for this "
                                       "long (or heartbeat_periods telemetry periods, if longer) is silent")
    heartbeat_periods: float = Field(default=3.0, gt=0, description="missed telemetry periods (manifest telemetry_s) "
                                     "before a device is silent")
    battery_low_soc: float = Field(default=20.0, ge=0, le=100, description="%: a battery below this is degraded")
    forecast_window_s: float = Field(default=900.0, ge=60, le=86_400, description="battery readings the "
                                     "time-to-empty forecast is fitted on, back from the latest")
    forecast_refit_s: float = Field(default=30.0, ge=0, le=3600, description="the fleet-wide views refit a pack's "
                                    "forecast at most this often (at once when it starts or stops charging)")
    rejected_window_s: float = Field(default=3600.0, gt=0, description="rejected messages this recent degrade a device")
    config_grace_s: float = Field(default=60.0, ge=0, description="time a device has to apply a new desired config")
    clock_drift_s: float = Field(default=120.0, gt=0, description="a device whose clock is further than this off "
                                 "the fleet's is degraded and alerts (clock_drift), judged from its messages as they arrive")
    # The overview's and kit pages' views (fleet/views/cache.py): recomputed on every change this process
    # sees, and all of them this often (health also moves with the clock alone).
    view_refresh_s: float = Field(default=10.0, gt=0, le=3600, description="how often every kit's view is "
                                  "recomputed (changes seen by this process recompute a kit at once)")
    view_busy_duty: float = Field(default=0.1, gt=0, le=1, description="share of its time the views' refresher "
                                  "spends on changed kits: a busy fleet's list is ~pass time / this old")
    view_max_age_s: float = Field(default=60.0, gt=0, description="a view older than this (the refresher stalled) "
                                  "is recomputed on read")
    # Venue lighting (fleet/venues/): compiled per controller for this long, pushed again this long
    # before it runs out (checked every venue_repush_interval_s); a controller takes at most
    # lighting_max_config bytes of config (the firmware's default; the horizon shrinks to fit).
    venue_horizon_h: float = Field(default=48.0, ge=6, le=24 * 14)
    venue_repush_before_h: float = Field(default=24.0, gt=0)
    venue_repush_interval_s: float = Field(default=300.0, gt=0, le=86_400)
    lighting_max_config: int = Field(default=4096, ge=1024, le=65_536)
    # Alerts (fleet/alerts/rules.py) and their webhook (fleet/alerts/notify.py). Low SOC uses battery_low_soc above.
    alert_eval_interval_s: float = Field(default=15.0, gt=0, le=3600, description="how often the alert rules are "
                                         "evaluated (also shortly after ingest commits, at most every alert_min_interval_s)")
    alert_min_interval_s: float = Field(default=2.0, ge=0, description="fewest seconds between two evaluations")
    alert_offline_grace_s: float = Field(default=300.0, ge=0, description="an offline or silent device alerts after "
                                         "this long without a message")
    alert_scanner_errors: int = Field(default=5, ge=1, description="malformed/bad_signature scans from one scanner "
                                      "within alert_scanner_window_s that raise an alert")
    alert_scanner_window_s: float = Field(default=600.0, gt=0, description="window of the scanner error count")
    alert_clock_grace_s: float = Field(default=120.0, ge=0, description="an online device whose clock is still unset "
                                       "this long after it said so alerts (clock_unset)")
    alert_webhook_url: str | None = Field(default=None, description="a webhook made the first notification target "
                                          "of a fleet that has none (targets are kept in the database, "
                                          "fleet/notify/)")
    alert_notify_grace_s: float = Field(default=120.0, ge=0, description="an alert open (and unacknowledged) this "
                                        "long is notified; one resolved sooner never is (until ops save the policy)")
    alert_notify_repeat_s: float = Field(default=3600.0, gt=0, description="repeat the notification of an alert "
                                         "still open and unacknowledged this often (until ops save the policy)")
    alert_notify_repeats: int = Field(default=2, ge=0, le=100, description="repeats to a notification target "
                                      "before an alert still unacknowledged escalates to the next target (until ops "
                                      "save the escalation policy from the dashboard)")
    alert_notify_poll_s: float = Field(default=1.0, gt=0, le=60, description="how often the notifier looks for "
                                       "notifications due and sends waiting for their retry")
    # Email notification targets (fleet/notify/email.py) go through this SMTP server.
    notify_smtp_host: str | None = Field(default=None, description="SMTP server for email notification targets; "
                                         "unset: email targets fail (and say so)")
    notify_smtp_port: int = Field(default=587, ge=1, le=65535)
    notify_smtp_from: str = Field(default="popkit-fleet@localhost", description="From: of notification emails")
    notify_smtp_user: str | None = Field(default=None, description="SMTP login, if the server wants one")
    notify_smtp_password: SecretStr | None = Field(default=None, description="its password")
    notify_smtp_tls: Literal["starttls", "tls", "none"] = Field(default="starttls", description="starttls (port "
                                                                 "587), tls (port 465) or none (a local relay)")
    alert_webhook_timeout_s: float = Field(default=5.0, gt=0, le=120, description="timeout of one webhook POST "
                                           "or SMTP exchange")
    alert_webhook_retries: int = Field(default=4, ge=0, le=20, description="retries after a failed POST "
                                       "(exponential backoff with jitter) before it counts as failed")
    alert_webhook_backoff_s: float = Field(default=1.0, ge=0, le=300, description="first retry delay, doubled each retry")
    # Telemetry retention (fleet/retention/): raw readings, then one-minute aggregates (telemetry_1m).
    # Events (check-ins, acks, readiness) are never deleted.
    retention_interval_s: float = Field(default=300.0, gt=0, le=86_400, description="how often raw telemetry is "
                                        "rolled up into 1-minute aggregates and old telemetry deleted")
    telemetry_raw_days: float = Field(default=7.0, ge=1, description="raw telemetry older than this is deleted "
                                      "(once rolled up)")
    telemetry_rollup_days: float = Field(default=90.0, ge=1, description="1-minute telemetry aggregates older "
                                         "than this are deleted")
    retention_chunk: int = Field(default=5000, ge=100, le=100_000, description="rows per transaction of the "
                                 "rollup and the deletes, so ingest never waits long")
    # API authentication (fleet/auth/): the key signing bearer tokens, from POPKIT_SECRET_KEY or the
    # file POPKIT_SECRET_KEY_FILE names; fleet.auth.secret.signing_key refuses a missing or weak one
    # unless demo is set (then a random one is made per process, and logins end with it).
    secret_key: SecretStr | None = Field(default=None, description="signs the API's tokens: 32+ random characters")
    secret_key_file: str | None = Field(default=None, description="a file holding secret_key (e.g. a mounted secret)")
    demo: bool = Field(default=False, description="local demo: a random signing key if none is given")
    # Field updates (fleet/updates/): uploaded bundles are checked with the release public key and kept here.
    release_pubkey: str | None = Field(default=None, description="file with the release public key (`popkit release keygen`); unset: uploads refused")
    release_dir: str = Field(default="var/releases", description="where uploaded release bundles are kept")
    # The rollout worker (fleet/updates/worker.py) and the bundle route the kits' agents fetch from.
    public_url: str | None = Field(default=None, description="the fleet's base URL as kits' agents reach it, for "
                                   "the bundle URL in update commands; unset: http://<http>")
    update_step_s: float = Field(default=5.0, gt=0, le=3600, description="how often running rollouts are stepped")
    update_offer_timeout_s: float = Field(default=7200.0, ge=60, le=7 * 86_400, description="an offered device "
                                          "with no news this long (no ack of its command, no state) has failed")
    update_command_ttl_s: int = Field(default=6 * 3600, ge=60, le=86_400, description="expiry of an update "
                                      "command: a slow fetch through the kit's uplink still acks within it")
    update_token_ttl_s: int = Field(default=24 * 3600, ge=60, le=7 * 86_400, description="how long a bundle "
                                    "token lets a kit's agent fetch its release (resumes included)")
    # Micro-retail (fleet/retail/): the orders_not_uploaded alert (Square's rule: offline payments upload within 24 h).
    retail_pending_alert_s: float = Field(default=24 * 3600.0, gt=0, description="a kit whose till last reported "
                                          "an order not uploaded for this long alerts (orders_not_uploaded)")
    token_ttl_s: int = Field(default=12 * 3600, ge=60, le=30 * 86_400, description="how long a login lasts")
    # HTTPS (docs/https.md): served by the fleet itself (tls_cert and tls_key, both or neither), or by a
    # reverse proxy in front whose X-Forwarded-Proto/-For the fleet believes only from forwarded_allow_ips.
    # Either way a request that came over HTTPS gets HSTS and a Secure session cookie.
    tls_cert: str | None = Field(default=None, description="PEM certificate (chain) to serve HTTPS with")
    tls_key: str | None = Field(default=None, description="PEM private key of tls_cert")
    forwarded_allow_ips: str | None = Field(default=None, description="comma-separated addresses (or *) of the "
                                            "reverse proxy whose X-Forwarded-Proto and X-Forwarded-For are "
                                            "believed; unset: none (the fleet faces clients itself)")
    hsts_max_age_s: int = Field(default=365 * 86_400, ge=0, le=2 * 365 * 86_400, description="Strict-Transport-"
                                "Security max-age sent on HTTPS answers; 0: no HSTS header")

    @property
    def http_host(self) -> str:
        return self.http.rsplit(":", 1)[0]

    @property
    def http_port(self) -> int:
        return int(self.http.rsplit(":", 1)[1])

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert or self.tls_key)

    @property
    def bundle_base(self) -> str:
        """The fleet's base URL for kits' agents, without a trailing slash."""
        return (self.public_url or f"http://{self.http}").rstrip("/")
