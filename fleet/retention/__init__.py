"""Retention: raw telemetry rolled up into per-minute aggregates, then deleted after its days
(``rollup``: the aggregation and the maintenance passes; ``store``: their writes)."""

from fleet.retention.rollup import (DAY_MS, MINUTE_MS, Maintenance, RetentionConfig, RetentionResult, aggregate_minutes,
                                    bucket_items, minute_of, pick_bucket_ms, run_once)

__all__ = ["DAY_MS", "MINUTE_MS", "Maintenance", "RetentionConfig", "RetentionResult", "aggregate_minutes",
           "bucket_items", "minute_of", "pick_bucket_ms", "run_once"]
