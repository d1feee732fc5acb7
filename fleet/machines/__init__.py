"""Machine tokens (issue 20): long-lived, scoped, revocable API tokens for machines (Prometheus
scraping /metrics, a script reading the API), stored as their sha256 and shown once.

tables.py holds the table (migration 0015), model.py the scopes and what each allows, store.py
making, listing, checking and revoking them. The routes are fleet/api/routes/machines.py; the
bearer path that accepts them is fleet/auth/deps.py.
"""
