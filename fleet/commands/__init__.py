"""What the fleet asks of devices: commands (channel ``cmd``) and desired config (channel ``config``).

``store`` is the record (a command pending until its ack, each desired config with its version),
``delivery`` publishes them over ingest's MQTT client after the record commits.
"""

from fleet.commands.delivery import (DEFAULT_TTL_S, MAX_TTL_S, RESEND_WINDOW_MS, NoScanners, Publisher, PublishFailed,
                                     UnknownDevice)
from fleet.commands.store import PayloadTooLarge

__all__ = ["DEFAULT_TTL_S", "MAX_TTL_S", "RESEND_WINDOW_MS", "NoScanners", "Publisher", "PublishFailed", "UnknownDevice",
           "PayloadTooLarge"]
