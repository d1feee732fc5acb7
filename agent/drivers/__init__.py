"""Drivers for the kit's serial devices (battery monitor, receipt printer)."""
