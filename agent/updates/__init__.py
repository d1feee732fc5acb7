"""Field updates on the kit's Pi (issue 18; docs/updates.md).

``cache``: the kit's copy of each release bundle, verified before it becomes visible and filled
resumably. ``keys``: the per-device update keys the tags are made with. ``server``: the kit-network
HTTP server the ESP32s download from. ``selfupdate``: the agent's own A/B switch with rollback.
"""
