"""The read models behind the API: ``devices`` (kits and devices with their latest readings),
``telemetry`` (a device's readings, raw and in buckets), ``health`` (health, readiness and battery
forecasts), ``activity`` (attendance, door scans, the audit trail). Read-only: each view's writes
belong to the concern that owns its tables. ``cache`` keeps every kit's computed view for the API
and the alerts, recomputed as commits change them."""
