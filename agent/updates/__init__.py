"""Field updates on the kit's Pi (issue 18; docs/updates.md).

``fetch``: a release bundle from the fleet into the kit's cache, once per release, resumed after an
uplink cut. ``cache``: the kit's copy of each release bundle, verified before it becomes visible and
filled resumably. ``offers``: the fleet's ``update`` command, and the retained offers to the kit's
ESP32s (deferred while the kit is in use) or the start of the agent's own update. ``keys``: the
per-device update keys the tags are made with. ``server``: the kit-network HTTP server the ESP32s
download from. ``selfupdate``: the agent's own A/B switch with rollback.
"""
