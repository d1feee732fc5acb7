"""The kits and devices the fleet knows: registered from each kit's manifest (``PUT /api/v1/kits/{id}``
or ``fleet serve --kit``), with what only the manifest says (its agent, its event window, each
device's telemetry period) stored beside them, so every fleet process reads the same."""

from fleet.registry.model import DeviceRef, KitInfo

__all__ = ["DeviceRef", "KitInfo"]
