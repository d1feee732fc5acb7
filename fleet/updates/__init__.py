"""Field updates at the fleet: releases (signed bundles, kits/release.py), staged rollouts that never
touch a show, and each device's update state (docs/updates.md, "Rollouts").

model.py is pure (the planner); store.py keeps it in the database (tables.py, migration 0011);
delivery.py steps running rollouts; the routes are fleet/api/routes/updates.py.
"""
