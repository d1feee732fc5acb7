"""TRANSITIONAL, to be deleted: the MQTT plumbing lives in plumbing/mqtt.py now. Only fleet/ingest.py
and fleet/service.py still import it from here, until their import lines change (issue 17)."""

from plumbing.mqtt import *  # noqa: F401,F403
from plumbing.mqtt import _after_our_disconnect  # noqa: F401
